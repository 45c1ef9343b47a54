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
# A <blockquote> opens and closes on lines of their own, marked with characters from the
# Private Use Area, so the quoted lines can be prefixed with "> " once the text is laid out.
_QUOTE_OPEN, _QUOTE_CLOSE = "\ue000", "\ue001"


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.pre = 0
        self.link: str | None = None
        self.link_text: list[str] = []

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
            self.parts.append("\n\n" if tag != "tr" else "\n")
        if tag == "pre":
            self.pre += 1
        if tag == "blockquote":
            self.parts.append(f"\n{_QUOTE_OPEN}\n")

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
            self.parts.append(f"\n{_QUOTE_CLOSE}\n")
        if tag in _BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        data = data.replace(_QUOTE_OPEN, "").replace(_QUOTE_CLOSE, "")
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
        if self.link is not None:
            self.link_text.append(data)
        self.parts.append(data)


def _quoted(lines: list[str]) -> list[str]:
    """Lines inside <blockquote> prefixed "> " per level, as a plain-text client quotes;
    no blank quoted lines where a quote opens or closes."""
    out: list[str] = []
    depth = 0
    fresh = False
    for line in lines:
        if line in (_QUOTE_OPEN, _QUOTE_CLOSE):
            while depth and out and out[-1] == ">" * depth:
                out.pop()
            depth = depth + 1 if line == _QUOTE_OPEN else max(0, depth - 1)
            fresh = True
        elif depth and not (fresh and not line):
            out.append((">" * depth + " " + line).rstrip())
            fresh = False
        elif not depth:
            out.append(line)
    return out


def html_to_text(html: str) -> str:
    collector = _TextCollector()
    with contextlib.suppress(Exception):  # html.parser gives up on some broken markup:
        collector.feed(html)  # keep what it read
        collector.close()
    text = "".join(collector.parts)
    lines = [line.rstrip() for line in text.replace("\xa0", " ").splitlines()]
    lines = [line.strip() if line.startswith("\t") else line.lstrip(" ") for line in lines]
    text = "\n".join(_quoted(lines))
    # Blank lines, quoted or not, collapse to one.
    text = re.sub(r"\n(>*)(?:\n\1(?=\n))+", r"\n\1", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
