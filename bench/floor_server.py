"""The floor: a bare aiosmtpd handler that inserts the raw bytes into SQLite and commits per mail.

Run by bench/ingest.py beside mailgate, on the same machine and client, so the two rates
can be compared in one run.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from typing import Any

from aiosmtpd.smtp import SMTP


class InsertRaw:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, data BLOB)")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.db.execute("BEGIN")
        self.db.execute("INSERT INTO raw (data) VALUES (?)", (envelope.original_content,))
        self.db.execute("COMMIT")
        return "250 OK"


async def main(port: int, path: str) -> None:
    handler = InsertRaw(path)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, decode_data=False), "127.0.0.1", port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
