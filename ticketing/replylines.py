"""Recognising the lines of a reply: quote attributions, header blocks, signatures."""

from __future__ import annotations

import re

# The line kinds a reply is read as (the scheme of mailgun/talon):
TEXT, EMPTY, QUOTED, SPLITTER, FORWARD = "t", "e", "m", "s", "f"

# A client wraps a long attribution over at most three lines ("On <date>, Name\n<addr>\nwrote:").
_WRAP = 3
# Attributions are short; the bound also keeps the patterns linear on huge lines.
_MAX_ATTRIBUTION = 400

_VERBS = (
    r"(?:On\s.*\bwrote"  # Gmail, Apple Mail, Thunderbird
    r"|Am\s.*\bschrieb\b.*"  # de
    r"|Le\s.*\ba\s+écrit\b.*"  # fr
    r"|El\s.*\bescribió\b.*"  # es
    r"|Il\s.*\bha\s+scritto"  # it ("Il giorno ... ha scritto:")
    r"|Op\s.*\bschreef\b.*"  # nl
    r"|Em\s.*\bescreveu"  # pt
    r"|W\s+dniu\s.*\bpisze"  # pl
    r"|Dne\s.*\bnapsal(?:\(a\)|a)?"  # cs
    r"|.*\b(?:skrev|kirjoitti|napisał(?:\(a\)|a)?)\b.*"  # sv, da, no, fi, pl
    r"|.*\s(?:написал(?:\(а\)|а)?|пишет))"  # ru
)
# Yahoo starts with dashes ("--- On Wed, 4/4/12, x@example.com wrote:"); French puts a space
# before the colon.
_ATTRIBUTION = re.compile(rf"^-*\s*{_VERBS}\s*[:：]\s*$", re.IGNORECASE)
# Any other language: a date or time and an <address>, ending with a colon
# ("26.06.2014, 14:41, "Alexander L" <abc@example.com>:").
_DATED_ADDRESS = re.compile(
    r"^.*(?:\d{1,2}[:.]\d{2}|\d{1,4}[./-]\d{1,2}[./-]\d{1,4}).*<\s*[^<>\s]+@[^<>\s]+\s*>.*[:：]\s*$"
)
_ORIGINAL = re.compile(
    r"^\s*-{2,}\s*(?:original message|ursprüngliche nachricht|message d'origine|mensaje original"
    r"|messaggio originale|oorspronkelijk bericht|ursprungligt meddelande|oprindelig meddelelse"
    r"|opprinnelig melding|wiadomość oryginalna|původní zpráva|исходное сообщение"
    r"|mensagem original)\s*-{2,}\s*$",
    re.IGNORECASE,
)
# Outlook draws this line above its header block; mailing lists above their footer.
_UNDERSCORES = re.compile(r"^\s*_{20,}\s*$")
_FORWARD = re.compile(
    r"^\s*(?:-{2,}\s*(?:forwarded message|weitergeleitete nachricht|message transféré"
    r"|mensaje reenviado|messaggio inoltrato|doorgestuurd bericht)\s*-{2,}"
    r"|begin forwarded message:|anfang der weitergeleiteten nachricht:)\s*$",
    re.IGNORECASE,
)

# Outlook (desktop and web) header blocks, bold ("*From:*") or not, in several languages.
_FROM_KEYS = r"From|De|Von|Van|Da|Från|Fra|Od|От|Frá|Lähettäjä|发件人|差出人"
_OTHER_KEYS = (
    r"Sent|Date|To|Subject|Cc|Bcc|Reply-To|Gesendet|Datum|An|Betreff|Envoyé|À|Objet|Enviado"
    r"|Fecha|Para|Asunto|Inviato|Data|A|Oggetto|Verzonden|Aan|Onderwerp|Skickat|Till|Ämne"
    r"|Sendt|Til|Emne|Wysłano|Do|Temat|Отправлено|Кому|Тема|Дата|Копия|Lähetetty|Vastaanottaja"
    r"|Aihe|发送时间|收件人|主题|送信日時|宛先|件名"
)
_FROM_LINE = re.compile(rf"^\s*\*?(?:{_FROM_KEYS})\s?:\*?(?:\s|$)")
_HEADER_LINE = re.compile(rf"^\s*\*?(?:{_FROM_KEYS}|{_OTHER_KEYS})\s?:\*?(?:\s|$)")

_SIGNATURE_DELIMITER = re.compile(r"^-- ?$")  # RFC 3676 section 4.3; many clients drop the space
_SENT_FROM = re.compile(
    r"^\s*(?:(?:Sent|Sendt|Skickat|Envoyé|Enviado|Inviato|Gesendet|Verzonden|Verstuurd|Wysłane"
    r"|Отправлено)\s+(?:from|with|using|via|von|mit|de|depuis|desde|da|dal|met|vanaf|från|fra|z|с)"
    r"|Get\s+Outlook\s+for|Von\s+meinem)"
    r"(?:\s+[^\s,;!?]+){0,6}\s*(?:<[^>]*>|\([^)]*\))?\s*$",
    re.IGNORECASE,
)
_RULE = re.compile(r"^\s*[-_=*~]{3,}\s*$")


def is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def is_signature_delimiter(line: str) -> bool:
    return bool(_SIGNATURE_DELIMITER.match(line))


def is_loose_attribution(line: str) -> bool:
    """A line that may introduce a quote below it: ends with a colon, names a writer or date."""
    line = line.strip()
    if not line.endswith((":", "：")) or len(line.split()) < 2:
        return False
    return bool(re.search(r"\d|@|\bwrote:$", line))


def is_tail_noise(line: str) -> bool:
    """A line that may close a reply without being part of it: 'Sent from my iPhone', a rule."""
    return bool(_SENT_FROM.match(line) or _RULE.match(line))


def classify(lines: list[str]) -> list[str]:
    """One kind per line; a splitter wrapped over several lines marks each of them."""
    kinds: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            kinds.append(EMPTY)
        elif is_quoted(line):
            kinds.append(QUOTED)
        elif _FORWARD.match(line):
            kinds.append(FORWARD)
        elif span := _splitter_span(lines, i):
            kinds.extend(SPLITTER * span)
            i += span
            continue
        else:
            kinds.append(TEXT)
        i += 1
    return kinds


def _splitter_span(lines: list[str], i: int) -> int:
    """How many lines from lines[i] make a splitter, 0 when none starts there."""
    line = lines[i]
    if _ORIGINAL.match(line) or _UNDERSCORES.match(line):
        return 1
    header = _header_block_span(lines, i)
    if header:
        return header
    for size in range(1, _WRAP + 1):
        window = lines[i : i + size]
        if len(window) < size or any(not w.strip() or is_quoted(w) for w in window):
            break
        # A wrapped attribution breaks mid-sentence: a finished sentence starts the reply's text.
        if any(w.rstrip().endswith((".", "!", "?", ":", ";")) for w in window[:-1]):
            break
        if _is_attribution(" ".join(w.strip() for w in window)):
            # A dated attribution found from the next line on means this line is the
            # reply's own text, not the attribution's start.
            rest = " ".join(w.strip() for w in window[1:])
            if size > 1 and re.search(r"\d", rest) and _is_attribution(rest):
                return 0
            return size
    return 0


def _is_attribution(joined: str) -> bool:
    if len(joined) > _MAX_ATTRIBUTION:
        return False
    if _ATTRIBUTION.match(joined) and re.search(r"\d|@", joined):
        return True
    return bool(_DATED_ADDRESS.match(joined))


def _header_block_span(lines: list[str], i: int) -> int:
    """Lines of a header block starting at i: two fields or more, one of them the sender."""
    if not _HEADER_LINE.match(lines[i]):
        return 0
    fields, has_from, end, j = 0, False, i, i
    while j < len(lines) and lines[j].strip() and not is_quoted(lines[j]):
        if _HEADER_LINE.match(lines[j]):
            fields += 1
            has_from = has_from or bool(_FROM_LINE.match(lines[j]))
            end = j + 1
        elif j > end:  # one wrapped continuation line at most
            break
        j += 1
    return end - i if fields >= 2 and has_from else 0
