"""Record payload -> main text (resiliparse), or the reason it has none."""

from __future__ import annotations

import codecs
from typing import Optional

from data_pipeline.readers import Record

_HTML_TYPES = ("text/html", "application/xhtml")
_JSON_KINDS = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", dict: "an object",
               list: "an array"}


_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), *((bom, "utf-16") for bom in _UTF16_BOMS))


def _decode(payload: bytes, declared: Optional[str]) -> str:
    """A byte-order mark, else UTF-8 where the bytes are valid UTF-8 (servers mislabel UTF-8 pages as latin-1;
    other encodings' non-ASCII text is almost never valid UTF-8), else the HTTP charset where Python knows it,
    else the page's <meta> charset, else uchardet's guess (resiliparse)."""
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    for bom, name in _BOMS:
        if payload.startswith(bom):
            return bytes_to_str(payload, name)
    wide = _wide(declared)
    # UTF-16 without its BOM, as declared: its ASCII letters hold NULs (and all-ASCII UTF-16 is valid UTF-8)
    if wide and b"\x00" in payload[:4096]:
        return payload.decode(wide, errors="replace")
    try:
        return payload.decode("utf-8")  # decoded once: the text is this
    except UnicodeDecodeError:
        pass
    try:  # servers send names Python has no codec for ("none", "utf8mb4"), and UTF-16 for pages that are not
        if declared and not wide:
            return bytes_to_str(payload, declared)
    except LookupError:
        pass
    return bytes_to_str(payload, detect_encoding(payload, from_html_meta=True))


def _wide(declared: Optional[str]) -> Optional[str]:
    """The codec of a declared UTF-16 or UTF-32 charset, else None."""
    try:
        name = codecs.lookup(declared).name if declared else ""
    except LookupError:
        return None
    return name if name.startswith(("utf-16", "utf-32")) else None


def _unicode_text(payload: bytes, declared: Optional[str]) -> bool:
    """Whether NUL bytes in the payload are those of UTF-16 or UTF-32 text: it starts with their byte-order mark,
    or its charset says so."""
    return payload.startswith(_UTF16_BOMS) or _wide(declared) is not None


def _decode_text(payload: bytes) -> str:
    """Plain text (a WET conversion, a .txt file): UTF-8, or UTF-16 where a byte-order mark says so."""
    if payload.startswith(_UTF16_BOMS):
        return payload.decode("utf-16", errors="replace")  # a cut odd byte at the end: one U+FFFD
    return payload.decode("utf-8-sig")


def extract_text(record: Record) -> tuple[Optional[str], Optional[str]]:
    """(text, None) or (None, drop reason)."""
    from resiliparse.extract.html2text import extract_plain_text

    payload = record.payload
    if isinstance(payload, str):
        text = payload
        try:
            text.encode("utf-8")  # JSON's \ud800 escapes make lone surrogates, which no library takes
        except UnicodeEncodeError:
            return None, "not valid Unicode (a lone surrogate)"
    elif not isinstance(payload, (bytes, bytearray)):  # a JSONL "text" that held a number, an object, null...
        return None, f"text is {_JSON_KINDS.get(type(payload), type(payload).__name__)}, not a string"
    elif not payload:
        return None, "empty record"
    elif b"\x00" in payload[:4096] and not _unicode_text(payload, record.charset):
        return None, "binary content"
    elif record.kind == "text":
        try:
            text = _decode_text(payload)
        except UnicodeDecodeError:
            return None, "invalid utf-8"
    else:
        if record.content_type and not record.content_type.startswith(_HTML_TYPES):
            return None, f"not html ({record.content_type.split(';')[0].strip()})"
        html = _decode(payload, record.charset)
        # main_content drops navigation and boilerplate, as CCNet/FineWeb extraction does.
        try:
            text = extract_plain_text(html, main_content=True, alt_texts=False, links=False)
        except Exception as exc:  # resiliparse on a page it cannot parse: that page is dropped, not the run
            return None, f"extraction failed ({type(exc).__name__})"
    if "\x00" in text:
        return None, "NUL characters in text"
    text = text.strip()
    if not text:
        return None, "no text"
    return text, None
