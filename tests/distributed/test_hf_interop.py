"""export-hf / import-hf: transformers' GPT-2 computes the same logits as megagpt on the same weights."""

from __future__ import annotations

import os

import pytest
import torch
import yaml

from tests.conftest import TINY, megagpt, read_jsonl

pytestmark = pytest.mark.slow


def megagpt_logits(checkpoint: str, tokens: torch.Tensor, tp_group) -> torch.Tensor:
    """The pp = 1 module of the checkpoint's config, weights from its layout-free shards, in this process."""
    from megagpt.config import from_dict
    from megagpt.model.gpt import GPT
    from megagpt.model.layers import LayerContext
    from megagpt.train.checkpoint import read_meta
    from megagpt.train.universal import UniversalShards

    cfg = from_dict(read_meta(checkpoint)["config"])
    model = GPT(LayerContext(model=cfg.model, seed=0, tp_group=tp_group))
    shards = UniversalShards(checkpoint)
    model.load_state_dict({name: shards.full(name)["fp32"] for name in shards.names()})
    model.eval()
    with torch.no_grad():
        return model(tokens)[..., : cfg.model.vocab_size]


def test_export_hf_matches_megagpt_logits(demo_prefix, tmp_path, world_of_one):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    run = tmp_path / "run"
    megagpt("pretrain", "--config", TINY, "--nproc", "4", "parallel.tp=2", "parallel.pp=2",
            f"data.prefixes=[{demo_prefix}]", f"run.dir={run}", "run.tensorboard=false", "train.progress=false",
            "train.steps=3", "train.eval_interval=0", "train.save_interval=3", "model.hidden_dropout=0.05",
            "model.attention_dropout=0.02")
    out = tmp_path / "hf"
    printed = megagpt("export-hf", "--checkpoint", str(run), "--out", str(out)).stdout
    assert "step 3" in printed
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))
    hf = GPT2LMHeadModel.from_pretrained(out, local_files_only=True).eval()
    assert (hf.config.resid_pdrop, hf.config.embd_pdrop, hf.config.attn_pdrop) == (0.05, 0.05, 0.02)  # were 0.0
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.decode(tokenizer.encode("def f(x):")) == "def f(x):"
    tokens = torch.randint(0, 4096, (2, 64), generator=torch.Generator().manual_seed(0))
    ours = megagpt_logits(str(run / "checkpoints" / "step_00000003"), tokens, world_of_one)
    with torch.no_grad():
        theirs = hf(tokens).logits
    assert theirs.shape == ours.shape == (2, 64, 4096)
    assert (theirs - ours).abs().max().item() < 1e-4

    # GPT-2's older tokenizer files, vocab.json + merges.txt, without tokenizer.json: import-hf left them behind,
    # and eval, generate and export-hf then had no tokenizer and took only a file for --tokenizer
    from megagpt.data.tokenizer import Tokenizer

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("config.json", "model.safetensors"):
        (legacy / name).write_bytes((out / name).read_bytes())
    Tokenizer.load(str(out / "tokenizer.json")).save_gpt2_files(str(legacy))
    printed = megagpt("import-hf", str(legacy), "--out", str(tmp_path / "imported")).stdout
    assert f"and its tokenizer ({legacy / 'vocab.json'} + {legacy / 'merges.txt'})" in printed
    text = "def f(x):\n    return x  # <|endoftext|> as text"
    assert Tokenizer.load(str(tmp_path / "imported" / "tokenizer.json")).encode(text) == \
        Tokenizer.load(str(out / "tokenizer.json")).encode(text)
    greedy = ["generate", "--checkpoint", str(tmp_path / "imported"), "--prompt", "def", "--temperature", "0",
              "--max-new-tokens", "4"]
    assert megagpt(*greedy).stdout == megagpt(*greedy, "--tokenizer", str(legacy)).stdout
    (tmp_path / "taken").write_text("x")
    proc = megagpt("import-hf", str(legacy), "--out", str(tmp_path / "taken"), check=False)
    assert proc.returncode == 2 and proc.stderr == f"megagpt: error: import-hf: --out {tmp_path / 'taken'} is a file, " \
                                                   f"not a directory\n"


def test_import_hf_loads_at_any_layout(demo_prefix, tmp_path, world_of_one):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=4096, n_positions=64, n_embd=64, n_layer=4, n_head=4,
                                    activation_function="gelu_new")).eval()
    with torch.no_grad():  # GPT-2 starts biases and LayerNorms at 0/1: make them matter
        for name, p in hf.named_parameters():
            if "ln_" in name or "bias" in name:
                p.add_(0.05 * torch.randn_like(p))
        hf.transformer.wte.weight.mul_(25.0)  # confident (wrong) predictions: far from a fresh model's ln(4096)
    hf_dir = tmp_path / "gpt2-random"
    hf.save_pretrained(hf_dir)
    imported = tmp_path / "imported"
    megagpt("import-hf", str(hf_dir), "--out", str(imported))
    model = yaml.safe_load((imported / "model.yaml").read_text())["model"]  # GPT-2's dropouts of 0.1 were lost
    assert (model["hidden_dropout"], model["attention_dropout"]) == (0.1, 0.1)
    checkpoint = imported / "checkpoints" / "step_00000000"
    tokens = torch.randint(0, 4096, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
    assert (megagpt_logits(str(checkpoint), tokens, world_of_one) - expected).abs().max().item() < 1e-4

    def held_out_at_step0(tp, pp, dp):
        run = tmp_path / f"from-hf-{tp}{pp}{dp}"
        megagpt("import-hf", str(hf_dir), "--out", str(run))
        megagpt("pretrain", "--config", TINY, "--nproc", str(tp * pp * dp), f"parallel.tp={tp}", f"parallel.pp={pp}",
                f"data.prefixes=[{demo_prefix}]", f"run.dir={run}", "run.tensorboard=false", "train.progress=false",
                "train.steps=1", "train.eval_interval=1", "train.eval_samples=16")
        return read_jsonl(str(run / "eval.jsonl"))[0]["loss"]

    single, sharded = held_out_at_step0(1, 1, 1), held_out_at_step0(2, 2, 2)
    assert sharded == pytest.approx(single, rel=1e-5)
    fresh = tmp_path / "fresh"
    megagpt("pretrain", "--config", TINY, "--nproc", "1", "parallel.tp=1", "parallel.pp=1",
            f"data.prefixes=[{demo_prefix}]", f"run.dir={fresh}", "run.tensorboard=false", "train.progress=false",
            "train.steps=1", "train.eval_interval=1", "train.eval_samples=16")
    assert read_jsonl(str(fresh / "eval.jsonl"))[0]["loss"] < single - 1.0


def test_export_refuses_what_gpt2_cannot_hold(tmp_path):
    proc = megagpt("export-hf", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "hf"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"megagpt: error: checkpoint {tmp_path / 'nope'}: no such directory"
    proc = megagpt("import-hf", str(tmp_path), "--out", str(tmp_path / "x"), check=False)
    assert proc.returncode == 2 and "has no config.json" in proc.stderr
    assert not (tmp_path / "x").exists()
