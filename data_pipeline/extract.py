"""Record payload -> main text (resiliparse), or the reason it has none."""

from __future__ import annotations

from typing import Optional

from data_pipeline.readers import Record

_HTML_TYPES = ("text/html", "application/xhtml")


def extract_text(record: Record) -> tuple[Optional[str], Optional[str]]:
    """(text, None) or (None, drop reason)."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    payload = record.payload
    if isinstance(payload, str):
        text = payload
    elif not payload:
        return None, "empty record"
    elif b"\x00" in payload[:4096]:
        return None, "binary content"
    elif record.kind == "text":
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return None, "invalid utf-8"
    else:
        if record.content_type and not record.content_type.startswith(_HTML_TYPES):
            return None, f"not html ({record.content_type.split(';')[0].strip()})"
        html = bytes_to_str(payload, detect_encoding(payload))
        # main_content drops navigation and boilerplate, as CCNet/FineWeb extraction does.
        text = extract_plain_text(html, main_content=True, alt_texts=False, links=False)
    text = text.strip()
    if not text:
        return None, "no text"
    return text, None
