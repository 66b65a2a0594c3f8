"""Odd records are counted drops, never crashes; empty shards and runs that keep nothing finish normally."""

import json

from data_pipeline.io import read_jsonl_gz
from data_pipeline.synthetic import english_pages
from tests.conftest import megagpt

FUZZ = [12345, 3.5, None, True, {"a": 1}, [1, 2], "", "   \n\t  ", "Page 1 of 3", "0123456789 " * 20,
        "\x01\x02\x03 control " * 50, "\u202e\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 " * 50,
        "nul\x00byte " * 100, "word " * 4_200_000]  # the last line is 21 MB
EXPECTED = {"text is a number, not a string": 2, "text is null, not a string": 1, "text is a boolean, not a string": 1,
            "text is an object, not a string": 1, "text is an array, not a string": 1, "no text": 2,
            "NUL characters in text": 1}


def write(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def corpus(tmp_path, *inputs, name="out"):
    out = tmp_path / name
    proc = megagpt("corpus", "run", f"input.paths=[{', '.join(str(i) for i in inputs)}]", f"output.dir={out}",
                   "tokenize.vocab_size=400", "executor.workers=2", "langid.threshold=0.5")
    return out, json.loads((out / "stats.json").read_text()), proc.stdout


def test_fuzzed_records_are_counted_drops_beside_good_ones(tmp_path):
    good = english_pages()[:5]
    # good pages carrying control characters and right-to-left marks still go through every stage
    mixed = [good[0], "\u200f" + good[1], good[2].replace(" ", " \x07", 3), *FUZZ, good[3], good[4]]
    write(tmp_path / "fuzz.jsonl", mixed)
    (tmp_path / "empty.jsonl").write_text("")  # an empty shard: left out of the token merge
    out, stats, _ = corpus(tmp_path, tmp_path / "fuzz.jsonl", tmp_path / "empty.jsonl")
    s = stats["stages"]
    assert s["read"]["in"] == len(mixed) and stats["documents"] == 5
    for reason, count in EXPECTED.items():
        assert s["extract"]["dropped"][reason] == count, reason
    dropped = sum(sum(v["dropped"].values()) for k, v in s.items())
    assert dropped + stats["documents"] == len(mixed)  # every record is kept or dropped with a reason
    ids = {d["id"] for d in read_jsonl_gz(str(out / "documents" / "commoncrawl" / "00000.jsonl.gz"))}
    assert ids == {"fuzz.jsonl:1", "fuzz.jsonl:2", "fuzz.jsonl:3", f"fuzz.jsonl:{len(mixed) - 1}",
                   f"fuzz.jsonl:{len(mixed)}"}
    assert json.loads((out / "mixture.json").read_text())["sources"][0]["documents"] == 5


def test_a_run_that_keeps_nothing_says_where_it_all_went(tmp_path):
    write(tmp_path / "junk.jsonl", FUZZ)
    out, stats, printed = corpus(tmp_path, tmp_path / "junk.jsonl")
    assert stats["documents"] == 0 and not (out / "mixture.json").exists()
    assert stats["kept_nothing"] == {"stage": "extract", "dropped": 9, "in": len(FUZZ)}
    assert "kept nothing, so no mixture.json; stage extract removed the most (9 of 14)" in printed
