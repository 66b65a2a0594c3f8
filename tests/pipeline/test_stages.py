"""Each stage on its own, with inputs whose right answer is known."""

import gzip
import json

import numpy as np
import pytest

from data_pipeline.config import DedupConfig
from data_pipeline.dedup import find_duplicates, jaccard, signature
from data_pipeline.extract import extract_text
from data_pipeline.langid import identify
from data_pipeline.readers import ReadError, Record, Skipped, read_file
from data_pipeline.synthetic import _record, foreign_page, mutate
from megagpt.errors import ConfigError

PROSE = ("The river runs through the old town, past the mill and the church, and on into the fields where "
         "farmers have grown wheat and barley for many hundreds of years. ") * 6


def records_and_errors(path):
    items = list(read_file(str(path)))
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, ReadError)]


def test_warc_records_keep_id_url_and_payload(tmp_path):
    path = tmp_path / "a.warc.gz"
    path.write_bytes(_record("<urn:uuid:1>", "http://x.org/a", b"<p>hi</p>") + _record("<urn:uuid:2>", "http://x.org/b", b"t", "", "conversion"))
    recs, errors = records_and_errors(path)
    assert [(r.index, r.record_id, r.url, r.kind) for r in recs] == [
        (0, "<urn:uuid:1>", "http://x.org/a", "html"), (1, "<urn:uuid:2>", "http://x.org/b", "text")]
    assert recs[0].payload == b"<p>hi</p>" and recs[0].content_type.startswith("text/html") and not errors


def warc(kind: str, block: bytes, rid: str = "<urn:uuid:x>", **headers) -> bytes:
    """One uncompressed WARC record."""
    if kind == "response":
        headers = {"Content_Type": "application/http; msgtype=response", **headers}
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    head = (f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Record-ID: {rid}\r\nWARC-Target-URI: http://x.org/\r\n"
            f"{extra}Content-Length: {len(block)}\r\n\r\n")
    return head.encode() + block + b"\r\n\r\n"


def http(body: bytes, *headers: str) -> bytes:
    return ("HTTP/1.1 200 OK\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode() + body


PAGE = f"<html><body><article><p>{PROSE}</p></article></body></html>".encode()


@pytest.mark.parametrize("form", ["member per record", "whole file", "plain"])
def test_a_cut_file_keeps_its_whole_records_drops_the_cut_one_and_says_so(tmp_path, form):
    """The cut record was kept as a document, ending mid-word (fastwarc hands on what there is), and a whole-file
    gzip cut short was not reported at all."""
    import random

    rng = random.Random(0)  # pages that compress little: a cut of 100 bytes lands in the last one
    pages = [" ".join("".join(rng.choices("abcdefghij", k=6)) for _ in range(200)).encode() for _ in range(5)]
    blobs = [warc("response", http(page, "Content-Type: text/html"), f"<urn:uuid:{i}>") for i, page in enumerate(pages)]
    data = {"member per record": b"".join(gzip.compress(b, mtime=0) for b in blobs),
            "whole file": gzip.compress(b"".join(blobs), mtime=0), "plain": b"".join(blobs)}[form]
    path = tmp_path / ("t.warc" if form == "plain" else "t.warc.gz")
    path.write_bytes(data[: len(data) - 100])
    recs, errors = records_and_errors(path)
    assert [(r.record_id, r.unreadable) for r in recs] == [(f"<urn:uuid:{i}>", None) for i in range(4)] + [
        ("<urn:uuid:4>", "truncated record")]
    assert recs[4].detail.endswith(f"of its {len(http(pages[4], 'Content-Type: text/html'))} bytes")
    assert len(errors) == 1 and errors[0].reason.startswith(("truncated gzip after 5 records (the member from byte",
                                                             "truncated WARC record after 5 records"))
    path.write_bytes(data)
    recs, errors = records_and_errors(path)
    assert len(recs) == 5 and not any(r.unreadable for r in recs) and errors == []


def test_a_corrupt_member_loses_its_record_alone(tmp_path):
    """Reading went on after the damage no more: the records after a bad member were lost, uncounted."""
    members = [gzip.compress(warc("response", http(PAGE), f"<urn:uuid:{i}>"), mtime=0) for i in range(4)]
    damaged = bytearray(members[1])
    damaged[len(damaged) // 2] ^= 0xFF
    path = tmp_path / "flip.warc.gz"
    path.write_bytes(members[0] + bytes(damaged) + members[2] + members[3])
    recs, errors = records_and_errors(path)
    assert [r.record_id for r in recs] == ["<urn:uuid:0>", "<urn:uuid:2>", "<urn:uuid:3>"]
    assert [e.reason.split(" (")[0] for e in errors] == [f"corrupt gzip member at byte {len(members[0])}"]
    assert errors[0].reason.endswith(f"bytes {len(members[0])}-{len(members[0]) + len(damaged)} skipped, their "
                                     f"records lost")
    for at in (0, 2):  # its magic damaged: the members after it were taken for junk and lost
        header = bytearray(members[1])
        header[at] ^= 0xFF
        path.write_bytes(members[0] + bytes(header) + members[2] + members[3])
        recs, errors = records_and_errors(path)
        assert [r.record_id for r in recs] == ["<urn:uuid:0>", "<urn:uuid:2>", "<urn:uuid:3>"]
        assert [e.reason for e in errors] == [f"at byte {len(members[0])} no gzip member starts: bytes "
                                              f"{len(members[0])}-{len(members[0]) + len(header)} skipped, their "
                                              f"records lost"]


def _set_length(record: bytes, length) -> bytes:
    head, _, rest = record.partition(b"Content-Length: ")
    return head + b"Content-Length: " + str(length).encode() + rest[rest.index(b"\r\n"):]


@pytest.mark.parametrize("form", ["member per record", "whole file", "plain"])
@pytest.mark.parametrize("damage", ["length too long", "length too short", "length not a number",
                                    "length negative", "length past any number", "length past the file's end",
                                    "junk between", "header garbled", "a WARC line in the page, then junk"])
def test_one_damaged_record_loses_no_other(tmp_path, form, damage):
    """fastwarc cannot go on past a record whose length is wrong, and the file's later records were all lost; a
    too long record was kept with the next one's header as its text. Reading now goes on at the next record."""
    blocks = [http(PAGE, "Content-Type: text/html") for _ in range(6)]
    records = [warc("response", b, f"<urn:uuid:{i}>") for i, b in enumerate(blocks)]
    size, body = len(blocks[2]), records[2][records[2].index(b"\r\n\r\n"):]
    records[2] = {"length too long": _set_length(records[2], size + 100),
                  "length too short": _set_length(records[2], size - 100),
                  "length not a number": _set_length(records[2], "abc"),
                  "length negative": _set_length(records[2], -5),
                  "length past any number": _set_length(records[2], 10 ** 25),
                  "length past the file's end": _set_length(records[2], 10 ** 6),  # fastwarc reads to the end
                  "junk between": records[2] + b"this line is no record\r\n",
                  "header garbled": b"WARC/1.0\r\n\x00\x01\x02" + body,
                  # the search for the next record starts after the whole record, not at a line inside its page
                  "a WARC line in the page, then junk": warc("response", blocks[2] + b"\nWARC/1.0\r\n",
                                                             "<urn:uuid:2>") + b"junk\r\n"}[damage]
    data = {"member per record": b"".join(gzip.compress(r, mtime=0) for r in records),
            "whole file": gzip.compress(b"".join(records), mtime=0), "plain": b"".join(records)}[form]
    path = tmp_path / ("t.warc" if form == "plain" else "t.warc.gz")
    path.write_bytes(data)
    recs, errors = records_and_errors(path)
    expected = {"junk between": {}, "a WARC line in the page, then junk": {},  # the record before the junk is whole
                "header garbled": {2: "gone"}}.get(damage, {2: "wrong Content-Length"})  # no type: skipped, counted
    assert {r.index: r.unreadable for r in recs} == {i: expected.get(i) for i in range(6) if expected.get(i) != "gone"}
    assert all(r.payload.startswith(blocks[0][blocks[0].index(b"<html>"):]) for r in recs if r.unreadable is None)
    cause = "a Content-Length past the end of the file" if damage == "length past the file's end" else \
        "unreadable (Invalid WARC header)"
    assert [e.reason.split(": read on")[0] for e in errors] == [f"{cause} after 3 records"]


def test_a_file_damaged_at_every_record_is_read_whole_and_said_in_a_few_lines(tmp_path):
    """Each damage point copied the whole 8 MiB window: 12,000 of them took 142 s."""
    records = [warc("response", http(PAGE, "Content-Type: text/html"), f"<urn:uuid:{i}>") for i in range(600)]
    (tmp_path / "t.warc").write_bytes(b"".join((b"junk\r\n" if i % 2 else b"") + r for i, r in enumerate(records)))
    recs, errors = records_and_errors(tmp_path / "t.warc")
    assert [r.index for r in recs] == list(range(600)) and not any(r.unreadable for r in recs)
    assert len(errors) == 11 and errors[-1].reason == "and 290 more places where reading went on past damage"


@pytest.mark.parametrize("coding", ["chunked", "br", "gzip", "deflate", "chunked gzip"])
def test_a_body_the_crawler_cut_is_decoded_as_far_as_it_goes(tmp_path, coding):
    """WARC-Truncated pages are kept; a cut chunked or brotli body was an 'undecodable HTTP body' drop. The same
    cut without WARC-Truncated is damage, and stays a drop."""
    import zlib

    import brotli

    import random

    rng = random.Random(0)  # text that compresses little: a cut of compressed bytes still holds pages of it
    words = " ".join("".join(rng.choices("abcdefghij", k=6)) for _ in range(600))
    body, headers = f"<html><body><article><p>{PROSE}</p><p>{words}</p></article></body></html>".encode(), \
        ["Content-Type: text/html"]
    if "gzip" in coding or coding in ("br", "deflate"):
        body = {"br": brotli.compress, "deflate": lambda b: zlib.compress(b)[2:-4]}.get(coding, gzip.compress)(body)
        headers.append(f"Content-Encoding: {coding.split()[-1]}")
    if "chunked" in coding:
        body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 300]), body[i:i + 300]) for i in range(0, len(body), 300))
        headers.append("Transfer-Encoding: chunked")
    block = http(body[:len(body) * 2 // 3], *headers)
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(gzip.compress(warc("response", block, "<urn:uuid:crawler>", WARC_Truncated="length")) +
                     gzip.compress(warc("response", block, "<urn:uuid:damaged>")))
    crawler, damaged = records_and_errors(path)[0]
    assert crawler.unreadable is None and crawler.crawler_cut == "length"
    text, why = extract_text(crawler)
    assert why is None and len(text) >= 100 and text[:100] == PROSE.strip()[:100]
    # fastwarc hands on a cut gzip body as far as it goes, marked or not
    assert damaged.unreadable == (None if coding == "gzip" else "undecodable HTTP body")


def test_http_headers_ended_by_lf_alone_are_read_as_browsers_read_them(tmp_path):
    """fastwarc read no header and no body: the page was an 'empty record' drop."""
    path = tmp_path / "lf.warc.gz"
    path.write_bytes(gzip.compress(warc("response", b"HTTP/1.1 200 OK\nContent-Type: text/html\n\n" + PAGE)))
    [record] = records_and_errors(path)[0]
    assert record.content_type == "text/html" and extract_text(record) == extract_text(
        Record(0, None, None, "html", PAGE, "text/html"))


def test_what_follows_the_records_is_named_right(tmp_path):
    record = warc("response", http(PAGE))
    last = warc("resource", b"").replace(b"Content-Length: 0", b"Content-Length: x")  # fastwarc reads it as 0
    cases = {"garbage.warc.gz": gzip.compress(record) + b"this is not gzip",
             "plain-named.warc.gz": record + record, "garbage.warc": record + b"junk",
             "bad-length.warc": record + last, "first-header-damaged.warc.gz": b"\x00" + gzip.compress(record)[1:]
             + gzip.compress(record)}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    reasons = {name: [e.reason for e in records_and_errors(tmp_path / name)[1]] for name in cases}
    assert reasons == {"garbage.warc.gz": [f"at byte {len(gzip.compress(record))} no gzip member starts: the 16 "
                                           f"bytes from there to the end are not gzip"],
                       "plain-named.warc.gz": [],  # was "corrupt gzip", its records all read
                       "garbage.warc": ["unreadable (Invalid WARC header) after 1 records"],
                       "bad-length.warc": ["the last record's Content-Length is 'x' after 2 records"],  # a ValueError
                       "first-header-damaged.warc.gz": [  # read as a plain WARC: every record lost
                           f"at byte 0 no gzip member starts: bytes 0-{len(gzip.compress(record))} skipped, their "
                           f"records lost"]}


def test_encoded_bodies_are_decoded_and_every_record_is_counted(tmp_path):
    import zlib

    chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (PAGE[:300], PAGE[300:])) + b"0\r\n\r\n"
    deflate = zlib.compressobj(wbits=-15)
    records = [
        warc("warcinfo", b"software: x\r\n"),
        warc("request", b"GET / HTTP/1.1\r\n\r\n"),
        warc("response", http(chunked, "Content-Type: text/html", "Transfer-Encoding: chunked"), "<urn:uuid:chunked>"),
        warc("metadata", b"fetchTimeMs: 1\r\n"),
        warc("response", http(gzip.compress(PAGE), "Content-Type: text/html", "Content-Encoding: gzip"), "<urn:uuid:gz>"),
        warc("response", http(deflate.compress(PAGE) + deflate.flush(), "Content-Type: text/html",
                              "Content-Encoding: deflate"), "<urn:uuid:deflate>"),
        warc("resource", PAGE, "<urn:uuid:resource>", Content_Type="text/html"),
        warc("revisit", b"", WARC_Profile="http://netpreserve.org/warc/1.0/revisit/identical-payload-digest"),
        warc("response", http(PAGE, "Content-Type: text/html"), "<urn:uuid:cut>", WARC_Truncated="length"),
        warc("response", http(b"not gzip", "Content-Encoding: gzip"), "<urn:uuid:bad-gzip>"),
        warc("response", http(PAGE, "Content-Type: text/html"), "<urn:uuid:last>"),
        warc("response", http(gzip.compress(PAGE), "Content-Type: text/html", "Content-Encoding: x-gzip"),
             "<urn:uuid:x-gzip>"),
        warc("response", http(PAGE, "Content-Type: text/html", "Content-Encoding: none"), "<urn:uuid:none>"),
        warc("response", http(gzip.compress(PAGE), "Content-Type: text/html", "Content-Encoding: gzip"),
             "<urn:uuid:untyped>").replace(b"Content-Type: application/http; msgtype=response\r\n", b""),
    ]
    path = tmp_path / "mixed.warc.gz"
    path.write_bytes(b"".join(gzip.compress(r) for r in records))
    items = list(read_file(str(path)))
    skipped = [i.reason for i in items if isinstance(i, Skipped)]
    assert skipped == ["warcinfo record", "request record", "metadata record", "revisit record"]
    recs = [i for i in items if isinstance(i, Record)]
    assert [(r.index, r.record_id, r.unreadable) for r in recs] == [
        (2, "<urn:uuid:chunked>", None), (4, "<urn:uuid:gz>", None), (5, "<urn:uuid:deflate>", None),
        (6, "<urn:uuid:resource>", None), (8, "<urn:uuid:cut>", None),
        (9, "<urn:uuid:bad-gzip>", "undecodable HTTP body"), (10, "<urn:uuid:last>", None),
        (11, "<urn:uuid:x-gzip>", None), (12, "<urn:uuid:none>", None), (13, "<urn:uuid:untyped>", None)]
    assert recs[4].crawler_cut == "length" and not any(r.crawler_cut for r in recs[:4])  # kept, and named
    expected = extract_text(Record(0, None, None, "html", PAGE, "text/html"))
    assert expected[0] and PROSE.strip()[:80] in expected[0]
    for r in recs[:5] + recs[-4:]:  # the untyped response's HTTP headers were read as page text
        assert extract_text(r) == expected, r.record_id
    from data_pipeline.readers import iter_texts

    assert len(list(iter_texts([str(path)]))) == 9  # the undecodable record is no classifier example  # the chunk sizes were in the text; gzip was "binary"


def test_a_body_stored_dechunked_under_its_chunked_header_is_read_as_stored(tmp_path):
    """Several WARC writers store the body de-chunked and keep `Transfer-Encoding: chunked`: it was an
    'undecodable HTTP body' drop. A body that starts as chunks and then breaks stays one."""
    broken = b"%x\r\n%s\r\nzz\r\n" % (300, PAGE[:300])
    path = tmp_path / "te.warc.gz"
    path.write_bytes(b"".join(gzip.compress(warc("response", http(body, "Content-Type: text/html",
                                                                       "Transfer-Encoding: chunked"), rid))
                              for body, rid in ((PAGE, "<urn:uuid:stored>"), (broken, "<urn:uuid:broken>"))))
    stored, cut = records_and_errors(path)[0]
    assert extract_text(stored) == extract_text(Record(0, None, None, "html", PAGE, "text/html"))
    assert cut.unreadable == "undecodable HTTP body"


def test_unreadable_and_jsonl_inputs(tmp_path):
    missing = list(read_file(str(tmp_path / "nope.warc.gz")))
    assert len(missing) == 1 and missing[0].reason.startswith("unreadable")
    for name in ("e.warc", "e.warc.gz", "e.wet.gz", "e.jsonl", "e.txt"):
        (tmp_path / name).write_bytes(b"")
        assert [(e.file, e.reason) for e in read_file(str(tmp_path / name))] == [(str(tmp_path / name), "empty file: no records")]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join([json.dumps({"id": "a", "text": "hello"}).encode(), b"{oops", b'{"text": "caf\xe9"}',
                                  b"[1, 2]", b'{"id": 7, "body": "x"}', b"{}", b""]))
    recs, errors = records_and_errors(path)
    assert errors == []  # malformed lines are records the read stage drops, not damage to the file
    assert [(r.index, r.record_id, r.payload) for r in recs if not r.unreadable] == [(1, "a", "hello")]
    assert [(r.index, r.unreadable, r.detail) for r in recs if r.unreadable] == [
        (2, "not JSON", "line 2, column 2: Expecting property name enclosed in double quotes"),
        (3, "invalid utf-8", "line 3, byte 13: invalid continuation byte"),
        (4, "not a JSON object", "line 4: a JSON list"),
        (5, "no 'text' field", "line 5: fields body, id"), (6, "no 'text' field", "line 6: fields none")]
    assert [r.record_id for r in recs] == ["a", None, None, None, "7", None]  # an id is kept where the line has one


@pytest.mark.parametrize("payload,kind,ctype,reason", [
    (b"", "html", "text/html", "empty record"),
    (b"\x89PNG\x00\x00\x01", "html", "image/png", "binary content"),
    (b"%PDF-1.4", "html", "application/pdf", "not html (application/pdf)"),
    (b"caf\xe9 \xff", "text", "text/plain", "invalid utf-8"),
    (b"<html><body><script>var x;</script></body></html>", "html", "text/html", "no text"),
    ("caf\ud800 au lait", "text", "", "not valid Unicode (a lone surrogate)"),  # JSON's "\ud800": fastText raised
])
def test_extraction_names_what_is_wrong(payload, kind, ctype, reason):
    assert extract_text(Record(0, None, None, kind, payload, ctype)) == (None, reason)


@pytest.mark.parametrize("encoding,header,meta", [
    ("euc-kr", "text/html; charset=euc-kr", ""), ("euc-kr", "text/html", '<meta charset="euc-kr">'),
    ("utf-8", "text/html; charset=iso-8859-1", ""), ("shift_jis", "text/html; charset=Shift_JIS", ""),
    ("cp1252", "text/html", '<meta charset="windows-1252">'),
    ("cp1252", "text/html; charset=none", ""), ("cp1252", "text/html; charset=utf8mb4", ""),  # Python has no codec
    ("cp1252", "text/html; charset=utf-16", ""),  # UTF-16 without its BOM is a wrong label
])
def test_a_page_is_read_in_the_charset_it_declares(tmp_path, encoding, header, meta):
    """uchardet alone read an EUC-KR page declared twice as mojibake (then dropped as Spanish); a UTF-8 page that
    the server calls latin-1 is UTF-8."""
    text = {"euc-kr": "이것은 서울 날씨에 관한 긴 문장입니다. 오늘은 맑고 따뜻합니다.",
            "shift_jis": "これは東京の天気についての長い文章です。今日は晴れて暖かいです。"}.get(
        encoding, "Café crème brûlée: a naïve façade, señor, jalapeño — “quoted” text.")
    page = f"<html><head>{meta}<title>t</title></head><body><article><p>{text}</p></article></body></html>"
    path = tmp_path / "p.warc.gz"
    path.write_bytes(gzip.compress(warc("response", http(page.encode(encoding), f"Content-Type: {header}"))))
    [record] = records_and_errors(path)[0]
    assert extract_text(record) == (text, None)


@pytest.mark.parametrize("codec,charset", [("utf-16", "utf-16"), ("utf-16", None), ("utf-16-le", "utf-16le"),
                                           ("utf-16-be", "UTF-16BE")])
def test_utf16_pages_are_read_not_taken_for_binary(codec, charset):
    """UTF-16's ASCII letters hold NUL bytes: a byte-order mark or a declared UTF-16 charset says they are text."""
    for text in ("Café crème brûlée: a naïve façade, señor.", "Plain ASCII text, whose UTF-16 is valid UTF-8."):
        page = f"<html><head><title>t</title></head><body><article><p>{text}</p></article></body></html>"
        assert extract_text(Record(0, None, None, "html", page.encode(codec), "text/html", charset=charset)) == \
            (text, None)


@pytest.mark.parametrize("text,codec,label", [
    ("北京是中华人民共和国的首都，朱镕基曾任总理。", "gbk", "gb2312"),  # 镕: GBK, not GB2312
    ("똠방각하 햏 뷁: 한국어로 된 긴 문장입니다.", "cp949", "euc-kr"),  # windows-949 only
    ("株式会社は㈱と書き、①②③と数えます。", "cp932", "Shift_JIS"),  # Windows-31J only
    ("He said “hello” and it’s fine — really – ok… costs €5.", "cp1252", "iso-8859-1"),
    ("He said “hello” and it’s fine — really – ok… costs €5.", "cp1252", "us-ascii"),
    # labels no browser knows are Python's codecs; a mislabelled page is read in what its bytes decode in
    ("Größe, Übung, Straße, schön, für, Mädchen: ├──┤ ░▒▓", "cp437", "cp437"),
    ("Größe, Übung, Straße: it’s “quoted” — €5", "cp1252", "latin-1"),
    ("We sell ordinary things. © 2023 Shop. Don’t copy. It’s “fine”.", "cp1252", "utf-8"),
    ("We sell ordinary things. © 2023 Shop. Don’t copy. It’s “fine”.", "cp1252", None),
    ("We sell ordinary things. Café, naïve, résumé.", "cp1252", "unicode"),  # a browser's UTF-16 label, no NULs
])
def test_a_charset_label_is_read_as_browsers_read_it(text, codec, label):
    """The WHATWG decoder of each label: pages under these labels are written in the supersets. Python's strict
    codecs failed on one superset character, and the whole page became cp1252 mojibake (CJK), or kept C1 control
    characters (latin-1, where … became a line break that the filters then cut the line at)."""
    page = f"<html><head><title>t</title></head><body><article><p>{text}</p></article></body></html>"
    assert extract_text(Record(0, None, None, "html", page.encode(codec), "text/html", charset=label)) == (text, None)


def test_markup_nested_past_the_limit_is_extracted_whole_not_a_stalled_shard():
    """resiliparse's main-content pass took a minute over 40,000 unclosed <div>s (a 1 MiB page: half an hour)."""
    from data_pipeline.extract import MAX_DEPTH

    def page(divs):  # <html>, <body> and <p> are elements of the chain too
        return ("<html><body><nav><a href=/>Home</a> | <a href=/login>Login</a></nav>" + "<div>" * divs
                + "<p>The text of the page, in a sentence that is long enough to be the main content.</p>").encode()

    main = "The text of the page, in a sentence that is long enough to be the main content."
    assert extract_text(Record(0, None, None, "html", page(MAX_DEPTH - 4), "text/html")) == (main, None)
    for divs in (MAX_DEPTH - 3, 40_000):  # whole, the navigation too: without the pass that took a minute
        text, reason = extract_text(Record(0, None, None, "html", page(divs), "text/html"))
        assert reason is None and text.endswith(main) and "Home" in text


def test_utf8_cut_inside_its_last_character_is_utf8():
    """A crawler's size limit cuts a page anywhere: the cut character is U+FFFD, the rest UTF-8 (it was all cp1252)."""
    text = "Ein schöner Tag für Café und Straße, " * 20
    page = f"<html><body><article><p>{text}</p></article></body></html>".encode()
    cut = page[:page.rindex("ß".encode()) + 1]
    decoded, _ = extract_text(Record(0, None, None, "html", cut, "text/html", charset="iso-8859-1"))
    assert decoded.endswith("und Stra\ufffd") and "schöner Tag für Café" in decoded


def test_a_damaged_byte_is_replaced_not_a_reason_to_read_the_page_in_another_charset():
    text = "이것은 서울 날씨에 관한 긴 문장입니다. 오늘은 맑고 따뜻합니다."
    page = f"<html><body><article><p>{text}</p><p>끝</p></article></body></html>".encode("cp949")
    damaged = page.replace("끝".encode("cp949"), b"\xff\xff")
    assert extract_text(Record(0, None, None, "html", damaged, "text/html", charset="euc-kr")) == \
        (text + "\n\n\ufffd\ufffd", None)


@pytest.mark.parametrize("payload", ["Plain text, café.".encode("utf-16"), b"\xef\xbb\xbfPlain text, caf\xc3\xa9."])
def test_plain_text_with_a_byte_order_mark_is_read_without_it(payload):
    assert extract_text(Record(0, None, None, "text", payload)) == ("Plain text, café.", None)


def test_an_input_is_read_by_its_name_in_any_case_and_other_names_are_refused(tmp_path):
    """UPPER.JSONL and DOC.TXT were read as WARC files: every record lost to 'Invalid WARC header', the run rc 0."""
    from data_pipeline.readers import input_kind

    (tmp_path / "UPPER.JSONL").write_text(json.dumps({"text": "a document"}) + "\n")
    (tmp_path / "DOC.TXT").write_text("a text file")
    assert [(r.kind, r.payload) for r in records_and_errors(tmp_path / "UPPER.JSONL")[0]] == [("text", "a document")]
    assert [(r.kind, r.payload) for r in records_and_errors(tmp_path / "DOC.TXT")[0]] == [("text", b"a text file")]
    assert [input_kind(n) for n in ("a.WARC.GZ", "CC-MAIN-1.warc.wet.gz", "x.Jsonl.Gz", "x.wet", "c4-00001.json.gz",
                                    "d.ndjson")] == ["warc", "warc", "jsonl", "warc", "jsonl", "jsonl"]
    record = warc("response", http(PAGE, "Content-Type: text/html"))
    (tmp_path / "CC-MAIN-1.warc.gz.1").write_bytes(gzip.compress(record))  # a download's second copy
    (tmp_path / "crawl.gz").write_bytes(gzip.compress(record))
    (tmp_path / "crawl").write_bytes(record)
    assert [input_kind(str(tmp_path / n)) for n in ("CC-MAIN-1.warc.gz.1", "crawl.gz", "crawl")] == ["warc"] * 3
    (tmp_path / "rows.json").write_text('{"text": "a"}\n')
    (tmp_path / "page.gz").write_bytes(gzip.compress(b"<html>a page</html>"))
    for name in ("rows.json", "page.gz", "missing.html"):
        with pytest.raises(ConfigError, match=f"{name}: an input is named .warc"):
            input_kind(str(tmp_path / name))


def test_jsonl_compression_is_judged_by_content_not_name(tmp_path):
    rows = b"".join(json.dumps({"text": f"document {i}"}).encode() + b"\n" for i in range(3))
    (tmp_path / "plain.jsonl.gz").write_bytes(rows)
    (tmp_path / "packed.jsonl").write_bytes(gzip.compress(rows))
    for name in ("plain.jsonl.gz", "packed.jsonl"):
        recs, errors = records_and_errors(tmp_path / name)
        assert errors == [] and [r.payload for r in recs] == [f"document {i}" for i in range(3)]
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(rows)[:-9])
    assert [e.reason.split(" (")[0] for e in records_and_errors(tmp_path / "cut.jsonl.gz")[1]] == ["truncated gzip"]


def test_extraction_keeps_main_text_and_decodes_other_charsets():
    page = "<html><body><nav>Home | Login</nav><article><p>Caf\xe9 cr\xe8me, na\xefve text.</p></article></body></html>"
    text, reason = extract_text(Record(0, None, None, "html", page.encode("latin-1"), "text/html; charset=iso-8859-1"))
    assert reason is None and "Café crème, naïve text." in text


def test_language_id_offline():
    import random

    assert identify(PROSE)[0] == "en" and identify(PROSE)[1] > 0.9
    rng = random.Random(0)
    for lang in ("fr", "de", "es"):
        assert identify(foreign_page(lang, rng))[0] == lang


def test_minhash_estimates_jaccard_and_clusters_keep_the_first():
    import random

    rng = random.Random(1)
    cfg = DedupConfig()
    base = " ".join(f"word{rng.randrange(5000)}" for _ in range(400))
    near = mutate(base, 0.01, rng)
    far = mutate(base, 0.2, rng)
    sigs = np.stack([signature(t, cfg) for t in (base, near, far, base)])
    assert abs(float(np.mean(sigs[0] == sigs[1])) - jaccard(base, near)) < 0.1
    dropped = find_duplicates(["a", "b", "c", "d"], ["h1", "h2", "h3", "h1"], sigs, cfg)
    assert dropped["d"] == {"stage": "exact-dedup", "reason": "exact duplicate", "duplicate_of": "a", "similarity": 1.0}
    assert dropped["b"]["stage"] == "fuzzy-dedup" and dropped["b"]["duplicate_of"] == "a"
    assert dropped["b"]["similarity"] == round(float(np.mean(sigs[0] == sigs[1])), 4)
    assert "c" not in dropped and "a" not in dropped


def test_drops_name_the_kept_document_through_chains_and_copies():
    """b ~ a and c ~ b but c is not verified against a: c still names a, and the pair that put it there."""
    cfg = DedupConfig()
    a = np.arange(cfg.num_perm, dtype=np.uint64)
    b, c = a.copy(), a.copy()
    b[:20] += 1000  # a-b agree on 92/112, b-c on 92/112, a-c on 72/112 (< verify_threshold 0.7 * 112 = 78.4)
    c[:40] += 1000
    c[:20] = b[:20]
    sigs = np.stack([a, b, c, c])
    dropped = find_duplicates(["a", "b", "c", "c2"], ["ha", "hb", "hc", "hc"], sigs, cfg,
                              record_ids=["ra", "rb", "rc", "rc2"], urls=["ua", "ub", "uc", "uc2"])
    assert dropped["c"]["duplicate_of"] == "a" and dropped["c"]["similarity"] == round(72 / 112, 4)
    assert dropped["c"]["matched"] == {"id": "b", "similarity": round(92 / 112, 4)}
    assert (dropped["c"]["duplicate_of_record_id"], dropped["c"]["duplicate_of_url"]) == ("ra", "ua")
    assert "matched" not in dropped["b"]
    # an exact copy of a near duplicate names the kept page, and the page it copies
    assert dropped["c2"] == {"stage": "exact-dedup", "reason": "exact duplicate", "duplicate_of": "a",
                             "duplicate_of_record_id": "ra", "duplicate_of_url": "ua",
                             "similarity": round(72 / 112, 4), "copy_of": "c"}



@pytest.mark.parametrize("hold", [1 << 10, 64 << 20])
def test_gzip_members_stream_what_zlib_gives(hold):
    """A whole-file gzip larger than `hold` streams on (its CRC is checked at its end only); members are checked
    one by one; a cut hands on what was there."""
    import io
    import random

    from data_pipeline.readers import _GzipMembers

    rng = random.Random(0)
    parts = [bytes(rng.getrandbits(8) for _ in range(3000)) + b"x" * 5000 for _ in range(6)]
    for data in (gzip.compress(b"".join(parts)), b"".join(gzip.compress(p) for p in parts)):
        members = _GzipMembers(io.BytesIO(data), hold=hold, chunk=997)
        out = b"".join(iter(lambda: members.read(4096), b""))
        assert out == b"".join(parts) and members.cut_at is None and not members.problems
        members = _GzipMembers(io.BytesIO(data[:-2000]), hold=hold, chunk=997)
        out = b"".join(iter(lambda: members.read(4096), b""))
        assert b"".join(parts).startswith(out) and len(out) > 30000 and members.cut_at is not None


def test_stats_count_bytes_not_characters(tmp_path):
    """bytes_in/bytes_kept were characters for JSONL and after extraction (a French page: 345 of its 414 bytes)."""
    from data_pipeline.config import load_corpus_config
    from data_pipeline.stages import process_shard

    text = "Le château de la forêt est très âgé, où l'été dure peu. " * 8
    (tmp_path / "fr.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    cfg = load_corpus_config(None, [f"input.paths=[{tmp_path}/fr.jsonl]", f"output.dir={tmp_path}/out",
                                    "langid.languages=[fr]", "langid.threshold=0", "filters.enabled=false"])
    process_shard(cfg, 0, str(tmp_path / "fr.jsonl"), "fr.jsonl")
    stages = json.loads((tmp_path / "out" / "work" / "process" / "00000.stats.json").read_text())["stats"]
    size = len(text.encode())
    assert size > len(text)
    assert {k: (stages[k]["bytes_in"], stages[k]["bytes_kept"]) for k in ("read", "extract", "langid")} == {
        "read": (size, size), "extract": (size, len(text.strip().encode())), "langid": (len(text.strip().encode()),) * 2}
