"""The web listener: what every connection a browser opens to it gets."""

from __future__ import annotations

import socket

from mailgate.web.server import listen


def test_each_connection_answers_without_waiting_for_the_browsers_acknowledgement() -> None:
    # With Nagle's algorithm on, the second of the two writes an answer takes waits for
    # the browser's delayed ACK: some 40 ms on every request after the first on a
    # kept-alive connection.
    server = listen("127.0.0.1", 0)
    server.setblocking(True)
    try:
        with socket.create_connection(server.getsockname()[:2], timeout=5):
            accepted, _ = server.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                assert accepted.proto == socket.IPPROTO_TCP
    finally:
        server.close()
