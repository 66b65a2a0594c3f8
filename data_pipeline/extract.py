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


# The WHATWG decoders of these labels are supersets of the codecs Python names them by: a gb2312 page with one
# GBK character, or a euc-kr page with one of windows-949's, failed strict decoding whole and became cp1252. Python's
# latin-1 and ascii (for labels browsers do not know, "latin-1" among them) are windows-1252 to a browser too.
_SUPERSETS = {"gbk": "gb18030", "euc_kr": "cp949", "shift_jis": "cp932", "big5": "big5hkscs", "iso8859-1": "cp1252",
              "ascii": "cp1252"}
# Legacy multi-byte codecs, where a few bytes that do not decode are damage (a browser shows U+FFFD), not the sign of
# another encoding that they are in UTF-8 and single-byte codecs
_MULTIBYTE = ("gb18030", "cp949", "cp932", "big5hkscs", "euc_jp", "iso2022_jp")


def _codec(label: Optional[str]) -> Optional[str]:
    """The Python codec a browser decodes a charset label with (WHATWG Encoding Standard: latin-1 and us-ascii are
    windows-1252, gb2312 is GBK...), else Python's own codec of that name (cp437, latin-1), else None."""
    from resiliparse.parse.encoding import map_encoding_to_html5

    if not label:
        return None
    name = map_encoding_to_html5(label, fallback_utf8=False)
    if name is None:
        try:
            name = codecs.lookup(label).name
        except LookupError:
            return None
    return _SUPERSETS.get(name, name)


def _decode(payload: bytes, declared: Optional[str]) -> str:
    """A byte-order mark, else UTF-8 where the bytes are valid UTF-8 (servers mislabel UTF-8 pages as latin-1;
    other encodings' non-ASCII text is almost never valid UTF-8, and one cut at its last character is UTF-8 still),
    else the first of the HTTP charset (read as a browser reads it) and the page's <meta> charset or uchardet's guess
    that decodes every byte, else the declared multi-byte codec with U+FFFD for a few damaged bytes, else windows-1252
    where it decodes every byte, else the guess with U+FFFD."""
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
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":  # cut inside its last character (a crawler's size limit)
            return payload.decode("utf-8", errors="replace")
    # servers send names there is no codec for ("none", "utf8mb4"), and UTF-16 for pages that are not
    declared_codec = None if wide else _codec(declared)
    if declared_codec:
        try:
            return payload.decode(declared_codec)
        except UnicodeDecodeError:
            pass
    guess = _codec(detect_encoding(payload, from_html_meta=True))  # only where the declared charset fails
    if guess and guess != declared_codec:
        try:
            return payload.decode(guess)
        except UnicodeDecodeError:
            pass
    if declared_codec in _MULTIBYTE:
        text = payload.decode(declared_codec, errors="replace")
        if text.count("\ufffd") <= 2 + len(text) // 1000:
            return text
    return bytes_to_str(payload, guess or "cp1252", errors="replace", fallback_encodings=("cp1252",))


def _wide(declared: Optional[str]) -> Optional[str]:
    """The codec of a declared UTF-16 or UTF-32 charset (Python's name, or a browser's: "unicode", "ucs-2"), else
    None."""
    try:
        name = codecs.lookup(declared).name if declared else ""
    except LookupError:
        name = _codec(declared) or ""
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


# resiliparse's main-content pass takes time that grows faster than the square of the nesting depth: 2,048
# unclosed <div>s take 0.1 s, 40,000 (195 KB of markup) a minute, a 1 MiB page half an hour. (Browsers' parsers
# stop nesting at 512.)
MAX_DEPTH = 2048


def _nested_past(tree, depth: int) -> bool:
    """Whether some element lies `depth` elements deep, asked of lexbor's selector engine (its C code walks each
    element's ancestors; a walk in Python over every node would cost more than the extraction)."""
    return tree.document.query_selector(" > ".join(["*"] * depth)) is not None


def extract_text(record: Record) -> tuple[Optional[str], Optional[str]]:
    """(text, None) or (None, drop reason)."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

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
        try:
            tree = HTMLTree.parse(html)
            # main_content drops navigation and boilerplate, as CCNet/FineWeb extraction does; a page nested past
            # MAX_DEPTH is extracted whole instead (0.03 s at 40,000 levels), boilerplate and all
            deep = html.count("<") >= MAX_DEPTH and _nested_past(tree, MAX_DEPTH)
            text = extract_plain_text(tree, main_content=not deep, alt_texts=False, links=False)
        except Exception as exc:  # resiliparse on a page it cannot parse: that page is dropped, not the run
            return None, f"extraction failed ({type(exc).__name__})"
    if "\x00" in text:
        return None, "NUL characters in text"
    text = text.strip()
    if not text:
        return None, "no text"
    return text, None
