"""Each stage on its own, with inputs whose right answer is known."""

import gzip
import json

import numpy as np
import pytest

from data_pipeline.config import DedupConfig
from data_pipeline.dedup import find_duplicates, jaccard, signature
from data_pipeline.extract import extract_text
from data_pipeline.langid import identify
from data_pipeline.readers import ReadError, Record, read_file
from data_pipeline.synthetic import _record, foreign_page, mutate

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


@pytest.mark.parametrize("compressed", [True, False])
def test_truncated_file_keeps_its_whole_records_and_says_so(tmp_path, compressed):
    blobs = [_record(f"<urn:uuid:{i}>", f"http://x.org/{i}", PROSE.encode()) for i in range(5)]
    data = b"".join(blobs if compressed else [gzip.decompress(b) for b in blobs])
    path = tmp_path / ("t.warc.gz" if compressed else "t.warc")
    path.write_bytes(data[: len(data) - 40])
    recs, errors = records_and_errors(path)
    assert len(recs) in (4, 5) and [r.record_id for r in recs] == [f"<urn:uuid:{i}>" for i in range(len(recs))]
    assert len(errors) == 1 and errors[0].reason.startswith("truncated")
    path.write_bytes(data)
    assert records_and_errors(path) == (records_and_errors(path)[0], [])


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
])
def test_extraction_names_what_is_wrong(payload, kind, ctype, reason):
    assert extract_text(Record(0, None, None, kind, payload, ctype)) == (None, reason)


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

