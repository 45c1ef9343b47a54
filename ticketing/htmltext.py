"""HTML mail as readable plain text, for HTML-only requests."""

from __future__ import annotations

import contextlib
import re
from html.parser import HTMLParser

_BLOCKS = {
    "p", "div", "section", "article", "header", "footer", "table", "tr", "ul", "ol",
    "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "hr", "form", "center",
}
_SKIP = {"script", "style", "head", "title", "template"}


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.pre = 0
        self.link: str | None = None
        self.link_text: list[str] = []
        self.quote_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skipping += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in ("td", "th"):
            self.parts.append("\t")
        elif tag == "a":
            self.link = dict(attrs).get("href") or None
            self.link_text = []
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.parts.append(f"[{alt}]")
        if tag in _BLOCKS:
            self.parts.append("\n\n" if tag not in ("tr",) else "\n")
        if tag == "pre":
            self.pre += 1
        if tag == "blockquote":
            self.quote_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag == "a" and self.link is not None:
            text = "".join(self.link_text).strip()
            if self.link.startswith(("http:", "https:")) and self.link != text:
                self.parts.append(f" ({self.link})")
            self.link = None
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag == "blockquote":
            self.quote_depth = max(0, self.quote_depth - 1)
        if tag in _BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
        if self.link is not None:
            self.link_text.append(data)
        if self.quote_depth:
            data = data.replace("\n", "\n> ")
        self.parts.append(data)


def html_to_text(html: str) -> str:
    collector = _TextCollector()
    try:
        collector.feed(html)
        collector.close()
    except Exception:
        pass
    text = "".join(collector.parts)
    lines = [line.rstrip() for line in text.replace("\xa0", " ").splitlines()]
    text = "\n".join(line.lstrip(" ") if not line.startswith("\t") else line.strip() for line in lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
