"""One table of the bad inputs real users feed, each through the `megagpt` CLI.

Every case ends in one of two ways, never a traceback: a one-line error naming the file or
key (exit code 2, before any process starts), or a counted drop in the corpus's stats.json.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import REPO, TINY, megagpt

pytestmark = pytest.mark.slow

PAGES = None


def pages():
    global PAGES
    if PAGES is None:
        from data_pipeline.synthetic import english_pages

        PAGES = english_pages()[:6]
    return PAGES


def jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def corpus(tmp, *args, inputs=None):
    inputs = inputs or [jsonl(tmp / "in" / "docs.jsonl", [{"text": t} for t in pages()])]
    return ["corpus", "run", f"input.paths=[{', '.join(map(str, inputs))}]", f"output.dir={tmp}/out",
            "tokenize.vocab_size=400", "executor.workers=1", "filters.min_words=10", *args]


def pretrain(tmp, prefix, *args):
    return ["pretrain", "--config", TINY, "--nproc", "1", "parallel.tp=1", "parallel.pp=1",
            f"data.prefixes=[{prefix}]", f"run.dir={tmp}/run", "train.steps=2", "train.eval_interval=0",
            "run.tensorboard=false", "train.progress=false", *args]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_prefix):
    """A tiny run with a checkpoint at step 2, and a Hugging Face directory exported from it."""
    tmp = tmp_path_factory.mktemp("trained")
    megagpt(*pretrain(tmp, demo_prefix, "train.save_interval=2"))
    megagpt("export-hf", "--checkpoint", str(tmp / "run"), "--out", str(tmp / "hf"))
    return tmp


# ---------------------------------------------------------------- cases: (args for megagpt, expected)
# expected: ("error", text the single line must contain) or ("drops", {stage: {reason: count}}) in stats.json


def big_tokenizer_data(tmp, prefix):
    """Shards whose tokenizer has more tokens than the tiny model's 4096-entry vocabulary."""
    from megagpt.data.demo_corpus import build_demo_shard

    return pretrain(tmp, build_demo_shard(str(tmp), vocab_size=6000))


def unlabelled_big_shard(tmp, prefix):
    """The same shards with no tokenizer beside them (made by Megatron-LM, say): their ids are the evidence."""
    from megagpt.data.demo_corpus import build_demo_shard

    made = build_demo_shard(str(tmp / "made"), vocab_size=6000)
    for ext in (".bin", ".idx"):
        shutil.copy(made + ext, f"{tmp}/bare{ext}")
    return pretrain(tmp, f"{tmp}/bare")


def hand_mixture_of_two_tokenizers(tmp, prefix):
    """A mixture.json written by hand naming one tokenizer, over shards that record two."""
    (tmp / "m.json").write_text(json.dumps({"tokenizer": prefix + ".tokenizer.json", "sources": [
        {"source": "a", "prefix": prefix, "weight": 0.5},
        {"source": "b", "prefix": str(other_tokenizer_shard(tmp)), "weight": 0.5}]}))
    return pretrain(tmp, prefix, "data.prefixes=[]", f"data.mixture={tmp / 'm.json'}")


def truncated_bin(tmp, prefix):
    for ext in (".bin", ".idx"):
        shutil.copy(prefix + ext, f"{tmp}/cut{ext}")
    with open(f"{tmp}/cut.bin", "r+b") as f:
        f.truncate(os.path.getsize(f"{tmp}/cut.bin") - 100)
    return pretrain(tmp, f"{tmp}/cut")


def nan_mixture(tmp, prefix):
    megagpt(*corpus(tmp))
    (tmp / "mix.yaml").write_text(f"mixture:\n  sources: [{{source: commoncrawl, run: {tmp}/out, weight: .nan}}]\n"
                                  f"  out: {tmp}/mix\n")
    return ["corpus", "mix", "--config", str(tmp / "mix.yaml")]


def twice_mixture(tmp, prefix):
    megagpt(*corpus(tmp))
    (tmp / "mix.yaml").write_text(f"mixture:\n  sources: [{{source: commoncrawl, run: {tmp}/out, weight: 1}}, "
                                  f"{{source: commoncrawl, run: {tmp}/out/, weight: 2}}]\n  out: {tmp}/mix\n")
    return ["corpus", "mix", "--config", str(tmp / "mix.yaml")]


def changed_resume(tmp, prefix, trained):
    shutil.copytree(trained / "run", tmp / "run", symlinks=True)
    return pretrain(tmp, prefix, "optim.lr=0.01", "train.steps=3")


def truncated_universal(tmp, prefix, trained):
    shutil.copytree(trained / "run", tmp / "run", symlinks=True)
    shard = next((tmp / "run" / "checkpoints").glob("step_*/universal/pp0_tp0.pt"))
    shard.write_bytes(shard.read_bytes()[:-500])
    return ["export-hf", "--checkpoint", str(tmp / "run"), "--out", str(tmp / "hf")]


def malformed_jsonl(tmp, prefix):
    path = tmp / "in" / "j.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\n".join([json.dumps({"text": pages()[0]}).encode(), b"{oops", b'{"text": "caf\xe9"}', b"[1]",
                                  b'{"body": "x"}']) + b"\n")
    return corpus(tmp, inputs=[path])


def imported_then_other_tokenizer(tmp, prefix, trained):
    """A model imported from Hugging Face, trained on in its run dir with another tokenizer's shards: it trained on
    ids whose text differs from its own, and its tokenizer.json was replaced, without a word."""
    megagpt("import-hf", str(trained / "hf"), "--out", str(tmp / "imported"))
    other = other_tokenizer_shard(tmp)
    # a fresh start sets the imported checkpoint aside (generate reads it with its data's tokenizer): allowed
    megagpt(*pretrain(tmp, other, f"run.dir={tmp / 'imported'}", "data.split=1,0,0", "train.resume=false",
                      "train.steps=1"))
    megagpt("import-hf", str(trained / "hf"), "--out", str(tmp / "imported-2"))
    return pretrain(tmp, other, f"run.dir={tmp / 'imported-2'}", "data.split=1,0,0")


def other_tokenizer_shard(tmp):
    """A shard with its own 300-token BPE beside it (megagpt tokenize's <prefix>.tokenizer.json)."""
    (tmp / "t.txt").write_text(" ".join(pages()))
    megagpt("tokenize", "--input", str(tmp / "t.txt"), "--output-prefix", str(tmp / "other"), "--vocab-size", "300")
    return tmp / "other"


def empty_shard(tmp, prefix):
    from megagpt.data.shards import write_shard
    from megagpt.data.tokenizer import Tokenizer

    write_shard(f"{tmp}/empty", [], Tokenizer.load(prefix + ".tokenizer.json"))
    return pretrain(tmp, f"{tmp}/empty")


def tokenize_nothing(tmp, prefix):
    (tmp / "e.txt").write_text("")
    return ["tokenize", "--input", str(tmp / "e.txt"), "--output-prefix", str(tmp / "e"), "--vocab-size", "300"]


def tokenize_into(tmp, prefix):
    """--output-prefix DIR/ (or "") wrote the hidden files DIR/.bin, DIR/.idx and DIR/.tokenizer.json."""
    (tmp / "shards").mkdir()
    (tmp / "t.txt").write_text("some text")
    return ["tokenize", "--input", str(tmp / "t.txt"), "--output-prefix", prefix, "--vocab-size", "300"]


def corrupt_checkpoint(command, at=0.5):
    """The first universal shard with one byte flipped, at `at` of its length (early on: in its pickle)."""
    def build(tmp, prefix, trained):
        shutil.copytree(trained / "run", tmp / "run", symlinks=True)
        shard = next((tmp / "run" / "checkpoints").glob("step_*/universal/pp0_tp0.pt"))
        data = bytearray(shard.read_bytes())
        data[int(len(data) * at)] ^= 0xFF
        shard.write_bytes(bytes(data))
        return [*command, "--checkpoint", str(tmp / "run")]
    return build


def export_onto_file(tmp, prefix, trained):
    (tmp / "taken").write_text("x")
    return ["export-hf", "--checkpoint", str(trained / "run"), "--out", str(tmp / "taken")]


def hf_dir_with(tmp, trained, edit):
    shutil.copytree(trained / "hf", tmp / "hf")
    edit(tmp / "hf")
    return ["import-hf", str(tmp / "hf"), "--out", str(tmp / "imported")]


def missing_layer(hf):
    from safetensors.torch import load_file, save_file

    weights = load_file(hf / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".h.3." not in k}, hf / "model.safetensors", metadata={"format": "pt"})


def cut_safetensors(hf):
    data = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(data[: len(data) // 2])


CASES = {
    "same file twice": (lambda tmp, p: corpus(tmp, inputs=[
        jsonl(tmp / "a" / "x.jsonl", [{"text": t} for t in pages()]), jsonl(tmp / "b" / "x.jsonl", [{"text": t} for t in pages()])]),
        ("drops", {"dedup": {"exact duplicate": 6}})),
    "record-level junk": (lambda tmp, p: corpus(tmp, inputs=[jsonl(tmp / "in" / "j.jsonl", [
        {"text": pages()[0]}, {"text": 12345}, {"text": {"a": 1}}, {"text": None}, {"text": "Page 1 of 3"}])]),
        ("drops", {"extract": {"text is a number, not a string": 1, "text is an object, not a string": 1,
                               "text is null, not a string": 1}, "langid": {"no language label": 1}})),
    "malformed JSONL lines": (malformed_jsonl, ("drops", {"read": {"not JSON": 1, "invalid utf-8": 1,
                                                                   "not a JSON object": 1, "no 'text' field": 1}})),
    "rerun with another vocab": (lambda tmp, p: megagpt(*corpus(tmp)) and corpus(tmp, "tokenize.vocab_size=500"),
                                 ("error", "(tokenize.vocab_size: 400 -> 500): --restart to redo it")),
    "tiny tokenize.vocab_size": (lambda tmp, p: corpus(tmp, "tokenize.vocab_size=100"),
                                 ("error", "tokenize.vocab_size=100 must be at least 257")),
    "dedup split past its slots": (lambda tmp, p: corpus(tmp, "executor.dedup_parts=300"),
                                   ("error", "executor.dedup_parts=300 must lie in [1, 256]")),
    "source outside output.dir": (lambda tmp, p: corpus(tmp, "input.source=../../x"),
                                  ("error", "input.source='../../x' may only hold letters")),
    "output.dir is a file": (lambda tmp, p: (tmp / "out").write_text("x") and corpus(tmp),
                             ("error", "is a file, not a directory")),
    "run.dir is a file": (lambda tmp, p: (tmp / "taken").write_text("x") and pretrain(tmp, p, f"run.dir={tmp}/taken"),
                          ("error", "/taken' is a file, not a directory")),
    "run.dir under a file": (lambda tmp, p: (tmp / "taken").write_text("x") and pretrain(tmp, p, f"run.dir={tmp}/taken/run"),
                             ("error", "/taken/run' cannot be written (Not a directory)")),
    "benchmark without text": (lambda tmp, p: corpus(tmp, f"decontam.paths=[{jsonl(tmp / 'b.jsonl', [{'id': 1}])}]"),
                               ("error", "b.jsonl:1 has no 'text' field (decontam.text_field) nor any of")),
    "input named .json": (lambda tmp, p: corpus(tmp, f"input.paths=[{jsonl(tmp / 'rows.json', [{'text': 'a'}])}]"),
                          ("error", "rows.json: an input is named .warc[.gz] or .wet[.gz] (WARC, or holds one under another name), "
                                    ".jsonl[.gz], .ndjson[.gz] or .json.gz (a document per line)")),
    "benchmark without n-grams": (lambda tmp, p: corpus(tmp, f"decontam.paths=[{jsonl(tmp / 'b.jsonl', [{'text': 'a b'}])}]"),
                                  ("error", "yields no 13-grams")),
    "mixture lists a source twice": (twice_mixture, ("error", "which mixture.sources[0] names already")),
    "langid language name": (lambda tmp, p: corpus(tmp, "langid.languages=[english]"),
                             ("error", "langid.languages: 'english' is not a code lid.176 labels")),
    "mixture weight NaN": (nan_mixture, ("error", "mixture.sources[0].weight=nan must be finite and positive")),
    "tokenizer larger than the model": (big_tokenizer_data, ("error", "tokens, more than model.vocab_size=4096")),
    "truncated .bin": (truncated_bin, ("error", "cut.bin has")),
    "a shard past the vocabulary, no tokenizer beside it": (unlabelled_big_shard, ("error", "bare.bin holds token id")),
    "a hand-made mixture of two tokenizers": (hand_mixture_of_two_tokenizers,
                                              ("error", "the training data were made with different tokenizers")),
    "split with Arabic digits": (lambda tmp, p: pretrain(tmp, p, "data.split=٩٨,٢,0"),
                                 ("error", "must be three comma-separated numbers")),
    "shards of two tokenizers": (lambda tmp, p: pretrain(tmp, f"{p}, {other_tokenizer_shard(tmp)}"),
                                 ("error", "the training data were made with different tokenizers")),
    "an empty shard": (empty_shard, ("error", "empty.idx lists no documents")),
    "mixture and prefixes": (lambda tmp, p: pretrain(tmp, p, f"data.mixture={tmp}/mixture.json"),
                             ("error", "names its own shards and weights: give it or data.prefixes")),
    "tokenize no text": (tokenize_nothing, ("error", "no text to tokenize (every document is empty)")),
    "tokenize into a directory": (lambda tmp, p: tokenize_into(tmp, f"{tmp}/shards/"),
                                  ("error", "/shards/' names a directory, not the shard's files")),
    "tokenize onto a directory": (lambda tmp, p: tokenize_into(tmp, f"{tmp}/shards"),
                                  ("error", "/shards' names a directory, not the shard's files")),
    "tokenize to an empty prefix": (lambda tmp, p: tokenize_into(tmp, ""),
                                    ("error", "--output-prefix '' names a directory")),
    "tokenize a .json file": (lambda tmp, p: (tmp / "docs.json").write_text('{"text": "a"}\n') and [
        "tokenize", "--input", str(tmp / "docs.json"), "--output-prefix", str(tmp / "t"), "--vocab-size", "300"],
        ("error", "docs.json: a text input is .txt (the file is one document) or .jsonl[.gz]")),
    "tokenize --vocab-size 100": (lambda tmp, p: ["tokenize", "--input", TINY, "--output-prefix", str(tmp / "t"),
                                                  "--vocab-size", "100"], ("error", "--vocab-size 100 must be at least 257")),
    "split with no training share": (lambda tmp, p: pretrain(tmp, p, "data.split=0,1,0"),
                                     ("error", "data.split='0,1,0' gives training no share")),
    "split with a blank share": (lambda tmp, p: pretrain(tmp, p, "data.split='98,2,'"),
                                 ("error", "must be three comma-separated numbers")),
    "resume with another lr": (changed_resume, ("error", "optim.lr=0.01 (checkpoint has 0.003)")),
    "truncated universal shard": (truncated_universal, ("error", "pp0_tp0.pt fails its sha256 checksum")),
    "export onto a file": (export_onto_file, ("error", "taken is a file, not a directory")),
    "generate from a corrupt checkpoint": (corrupt_checkpoint(["generate", "--prompt", "x"]),
                                           ("error", "pp0_tp0.pt fails its sha256 checksum")),
    "generate from a checkpoint with a damaged pickle": (corrupt_checkpoint(["generate", "--prompt", "x"], at=0.0005),
                                                         ("error", "pp0_tp0.pt fails its sha256 checksum")),
    "generate a prompt that is not UTF-8": (lambda tmp, p: ["generate", "--checkpoint", str(tmp), "--prompt",
                                                            "caf\udcff"],  # the byte 0xff, as a shell passes it
                                            ("error", "--prompt holds bytes that are not UTF-8 text")),
    "perplexity from a corrupt checkpoint": (corrupt_checkpoint(["eval", "perplexity", "--data", os.path.join(REPO, "requirements.txt")]),
                                             ("error", "pp0_tp0.pt fails its sha256 checksum")),
    "perplexity --stride past the context": (lambda tmp, p, t: [
        "eval", "perplexity", "--checkpoint", str(t / "run"), "--data", os.path.join(REPO, "requirements.txt"),
        "--stride", "1000", "--nproc", "2"], ("error", "--stride 1000 must lie in [1, the model's context 64]")),
    "perplexity of another tokenizer's shard": (lambda tmp, p, t: [
        "eval", "perplexity", "--checkpoint", str(t / "run"), "--data", str(other_tokenizer_shard(tmp))],
        ("error", "other was tokenized with")),
    "an imported model trained on another tokenizer's shard": (
        imported_then_other_tokenizer, ("error", "holds checkpoints of a model that reads")),
    "import-hf missing layers": (lambda tmp, p, t: hf_dir_with(tmp, t, missing_layer),
                                 ("error", "lacks weights the config implies: missing transformer.h.3.")),
    "import-hf bad config.json": (lambda tmp, p, t: hf_dir_with(tmp, t, lambda hf: (hf / "config.json").write_text("{oops")),
                                  ("error", "config.json is not a readable model config")),
    "import-hf truncated weights": (lambda tmp, p, t: hf_dir_with(tmp, t, cut_safetensors),
                                    ("error", "cannot be read")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tmp_path, demo_prefix, request):
    build, (kind, expected) = CASES[case]
    extra = (request.getfixturevalue("trained"),) if build.__code__.co_argcount == 3 else ()
    args = build(tmp_path, demo_prefix, *extra)
    proc = megagpt(*args, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if kind == "error":
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("megagpt: error: ") and expected in lines[0], proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())["stages"]
    for stage, reasons in expected.items():
        for reason, count in reasons.items():
            assert stats[stage]["dropped"].get(reason) == count, (stage, reason, stats[stage]["dropped"])
