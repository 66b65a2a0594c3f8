"""SFT samples: the loss covers the response and its end, never the prompt; bad demonstration files are named."""

import codecs
import gzip
import json

import pytest

from megagpt.errors import DataError
from megagpt.rlhf.data import read_demonstrations, split
from megagpt.rlhf.sft import Demonstration, DemonstrationDataset


def test_loss_mask_covers_the_response_and_its_end_only():
    ds = DemonstrationDataset([Demonstration([1, 2, 3], [4, 5])], seq_length=8, eod=0, num_samples=1, seed=0)
    s = ds[0]
    assert s["tokens"].tolist() == [1, 2, 3, 4, 5, 0, 0, 0]
    assert s["labels"].tolist() == [2, 3, 4, 5, 0, 0, 0, 0]
    assert s["loss_mask"].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]  # predicting 4, 5 and the end


def test_an_empty_prompt_begins_as_a_document_so_every_response_token_is_learned(tmp_path):
    """With no prompt token the response's first token was never a target."""
    from megagpt.config import load_config
    from megagpt.data.tokenizer import Tokenizer
    from megagpt.rlhf.sft import tokenize_demonstrations

    tok = Tokenizer.train(["the answer is here and there"] * 20, vocab_size=300)
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "", "response": "the answer"}) + "\n")
    cfg = load_config(None, [f"sft.data={tmp_path / 'd.jsonl'}", "model.seq_length=16"])
    [demo], left_out = tokenize_demonstrations(cfg, tok)
    assert demo.prompt == [tok.eod] and left_out == 0
    s = DemonstrationDataset([demo], seq_length=16, eod=tok.eod, num_samples=1, seed=0)[0]
    learned = [label for label, on in zip(s["labels"].tolist(), s["loss_mask"].tolist()) if on]
    assert learned == tok.encode("the answer") + [tok.eod]


def test_a_long_demonstration_is_cut_to_the_context():
    ds = DemonstrationDataset([Demonstration(list(range(1, 8)), [8, 9, 10, 11, 12])], 8, eod=0, num_samples=1, seed=0)
    s = ds[0]
    assert s["tokens"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8] and s["labels"].tolist() == [2, 3, 4, 5, 6, 7, 8, 9]
    assert s["loss_mask"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]


def test_epochs_visit_every_demonstration_in_a_seeded_order():
    demos = [Demonstration([i + 1], [50 + i]) for i in range(5)]
    ds = DemonstrationDataset(demos, 4, eod=0, num_samples=10, seed=1)
    firsts = [ds[i]["tokens"][0].item() for i in range(10)]
    assert sorted(firsts[:5]) == sorted(firsts[5:]) == [1, 2, 3, 4, 5] and firsts[:5] != firsts[5:]
    again = DemonstrationDataset(demos, 4, eod=0, num_samples=10, seed=1)
    assert [again[i]["tokens"][0].item() for i in range(10)] == firsts
    train, valid = split(demos, 0.4, seed=0)
    assert len(valid) == 2 and len(train) == 3 and not {id(d) for d in train} & {id(d) for d in valid}


def test_an_epoch_is_shuffled_once_in_the_order_saved_runs_resume_with():
    from megagpt.rlhf import data

    data._epoch_order.cache_clear()
    items = list(range(1000))
    seen = [data.epoch_item(items, i, seed=7) for i in range(2000)]
    assert data._epoch_order.cache_info().misses == 2  # one shuffle per epoch, not one per sample
    assert sorted(seen[:1000]) == items == sorted(seen[1000:])
    assert seen[:4] == [257, 574, 911, 948] and seen[1000:1004] == [907, 814, 919, 444]  # the order before the cache


@pytest.mark.parametrize("line,message", [
    ("{oops", "demos.jsonl: 1 malformed line \\(line 2: not JSON\\)"),
    (json.dumps({"prompt": "x"}), "line 2: needs a string field \"response\""),
    (json.dumps({"prompt": "x", "response": 5}), "line 2: needs a string field \"response\""),
    (json.dumps({"prompt": "x", "response": "  "}), "line 2: the response is empty"),
    (json.dumps({"prompt": "x \ud800", "response": "r"}), r"line 2: holds '\\ud800', a lone UTF-16 surrogate"),
])
def test_bad_demonstrations_name_the_line(tmp_path, line, message):
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        read_demonstrations(str(path))


def test_a_gzipped_file_is_read_by_its_bytes(tmp_path):
    """Every other JSONL reader took gzip by its first bytes; this one said "not UTF-8 (invalid start byte at byte 1)"."""
    rows = "".join(json.dumps({"prompt": f"p{i}", "response": "r"}) + "\n" for i in range(3)).encode()
    (tmp_path / "demos.jsonl.gz").write_bytes(gzip.compress(rows))
    assert read_demonstrations(str(tmp_path / "demos.jsonl.gz")) == [(f"p{i}", "r") for i in range(3)]
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(rows)[:-10])
    with pytest.raises(DataError, match=r"cut.jsonl.gz: truncated gzip"):
        read_demonstrations(str(tmp_path / "cut.jsonl.gz"))


def test_bytes_that_are_not_utf8_are_placed_by_line_and_byte_of_the_file(tmp_path):
    good = b"".join(json.dumps({"prompt": f"p{i}", "response": "r"}).encode() + b"\n" for i in range(5000))
    (tmp_path / "demos.jsonl").write_bytes(good + b'{"prompt": "\xff", "response": "r"}\n')
    with pytest.raises(DataError, match=rf"demos.jsonl:5001: not UTF-8 text \(byte {len(good) + 12}: invalid start"):
        read_demonstrations(str(tmp_path / "demos.jsonl"))  # was "byte 61", the offset in a decode chunk


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    """Saved by a Windows editor: 'line 1: not JSON', though the line is JSON after the mark; bytes are still
    counted from the file's start."""
    rows = "".join(json.dumps({"prompt": f"p{i}", "response": "r"}) + "\n" for i in range(2))
    (tmp_path / "demos.jsonl").write_bytes(codecs.BOM_UTF8 + rows.encode() + b'{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=rf"demos.jsonl:3: not UTF-8 text \(byte {3 + len(rows) + 12}:"):
        read_demonstrations(str(tmp_path / "demos.jsonl"))
    (tmp_path / "demos.jsonl").write_bytes(codecs.BOM_UTF8 + rows.encode())
    assert read_demonstrations(str(tmp_path / "demos.jsonl")) == [("p0", "r"), ("p1", "r")]
