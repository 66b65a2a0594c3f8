"""Hugging Face interop: a megagpt checkpoint <-> a `transformers` GPT-2 model directory.

Both directions go through the checkpoint's layout-free `universal/` shards, so neither
needs a process group, and an imported model loads at any (tp, pp, dp).

Two layouts differ from GPT-2's. Our fused qkv output features are ordered
(head, q|k|v, head_dim) so a contiguous TP split keeps whole heads; GPT-2's c_attn
orders them (q|k|v, head, head_dim). GPT-2's Conv1D stores weights as [in, out], the
transpose of a Linear. The vocabulary is padded here (make_vocab_size_divisible_by)
and exact there.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Optional

import torch

from megagpt.config import Config, ConfigError, ModelConfig, from_dict
from megagpt.errors import DataError
from megagpt.train.checkpoint import (LATEST, CheckpointError, atomic_write_text, checkpoint_root, read_meta,
                                      resolve_checkpoint, tag_for, verify, write_universal)
from megagpt.train.universal import UniversalShards, require_language_model

# Our canonical (pp = 1) parameter names -> GPT-2's; "{}" is the block index. One map drives both directions.
HF_NAMES = {
    "embedding.word_embeddings.weight": "transformer.wte.weight",
    "embedding.position_embeddings.weight": "transformer.wpe.weight",
    "final_norm.norm.weight": "transformer.ln_f.weight",
    "final_norm.norm.bias": "transformer.ln_f.bias",
    "blocks.{}.ln1.weight": "transformer.h.{}.ln_1.weight",
    "blocks.{}.ln1.bias": "transformer.h.{}.ln_1.bias",
    "blocks.{}.ln2.weight": "transformer.h.{}.ln_2.weight",
    "blocks.{}.ln2.bias": "transformer.h.{}.ln_2.bias",
    "blocks.{}.attn.qkv.weight": "transformer.h.{}.attn.c_attn.weight",
    "blocks.{}.attn.qkv.bias": "transformer.h.{}.attn.c_attn.bias",
    "blocks.{}.attn.proj.weight": "transformer.h.{}.attn.c_proj.weight",
    "blocks.{}.attn.proj.bias": "transformer.h.{}.attn.c_proj.bias",
    "blocks.{}.mlp.fc1.weight": "transformer.h.{}.mlp.c_fc.weight",
    "blocks.{}.mlp.fc1.bias": "transformer.h.{}.mlp.c_fc.bias",
    "blocks.{}.mlp.fc2.weight": "transformer.h.{}.mlp.c_proj.weight",
    "blocks.{}.mlp.fc2.bias": "transformer.h.{}.mlp.c_proj.bias",
}
CONV1D = (".attn.qkv.weight", ".attn.proj.weight", ".mlp.fc1.weight", ".mlp.fc2.weight")  # stored [in, out] there


def name_pairs(m: ModelConfig) -> list[tuple[str, str]]:
    """(ours, GPT-2's) for every weight of a model of this shape."""
    pairs = []
    for ours, theirs in HF_NAMES.items():
        blocks = range(m.num_layers) if "{}" in ours else [None]
        pairs += [(ours.format(i), theirs.format(i)) for i in blocks]
    return pairs


def _reorder_qkv(t: torch.Tensor, heads: int, to_hf: bool) -> torch.Tensor:
    """Our (head, q|k|v, head_dim) output order <-> GPT-2's (q|k|v, head, head_dim), along dim 0."""
    rest = t.shape[1:]
    split = (heads, 3) if to_hf else (3, heads)
    return t.reshape(*split, -1, *rest).transpose(0, 1).reshape(t.shape)


def check_exportable(m: ModelConfig) -> None:
    if m.norm_position != "pre":
        raise ConfigError("export-hf: only pre-LN models map onto GPT-2 (this one has model.norm_position=post)")
    if m.attention != "dense":
        raise ConfigError(f"export-hf: GPT-2 has dense attention only (this model has model.attention={m.attention})")


def to_hf_state_dict(full: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    sd = {}
    for ours, theirs in name_pairs(m):
        t = full[ours]
        if ".attn.qkv." in ours:
            t = _reorder_qkv(t, m.num_heads, to_hf=True)
        if ours.endswith(CONV1D):
            t = t.t()
        sd[theirs] = t
    sd["transformer.wte.weight"] = sd["transformer.wte.weight"][: m.vocab_size]  # drop the vocab padding
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return {k: v.contiguous().clone() for k, v in sd.items()}


def from_hf_state_dict(sd: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    full = {}
    for ours, theirs in name_pairs(m):
        t = sd[theirs]
        if ours.endswith(CONV1D):
            t = t.t()
        if ".attn.qkv." in ours:
            t = _reorder_qkv(t, m.num_heads, to_hf=False)
        full[ours] = t
    wte = full["embedding.word_embeddings.weight"]
    padded = torch.zeros(m.padded_vocab_size, m.hidden_size, dtype=wte.dtype)
    padded[: wte.shape[0]] = wte
    full["embedding.word_embeddings.weight"] = padded
    return {k: v.float().contiguous() for k, v in full.items()}


def gpt2_config(m: ModelConfig, eos_id: int | None):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=m.vocab_size, n_positions=m.seq_length, n_embd=m.hidden_size, n_layer=m.num_layers,
                      n_head=m.num_heads, n_inner=m.ffn_size, activation_function="gelu_new",
                      layer_norm_epsilon=m.layernorm_epsilon, initializer_range=m.init_std,
                      resid_pdrop=m.hidden_dropout, embd_pdrop=m.hidden_dropout, attn_pdrop=m.attention_dropout,
                      bos_token_id=eos_id, eos_token_id=eos_id,
                      tie_word_embeddings=True)


def model_config_from_gpt2(hf) -> ModelConfig:
    act = getattr(hf, "activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(f"import-hf: activation_function={act!r}; megagpt's MLP uses the tanh GELU (gelu_new)")
    if getattr(hf, "scale_attn_by_inverse_layer_idx", False) or getattr(hf, "reorder_and_upcast_attn", False):
        raise ConfigError("import-hf: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
    if not getattr(hf, "scale_attn_weights", True):
        raise ConfigError("import-hf: scale_attn_weights=false (scores not divided by sqrt(head size)) is not supported")
    if not getattr(hf, "tie_word_embeddings", True):
        raise ConfigError("import-hf: tie_word_embeddings=false: megagpt's output layer is the token embedding (GPT-2's "
                          "tied lm_head); the model's own lm_head.weight would be dropped")
    resid, embd = getattr(hf, "resid_pdrop", 0.0), getattr(hf, "embd_pdrop", 0.0)
    if resid != embd:  # megagpt's hidden_dropout is both: a setting for further training, not the weights
        print(f"megagpt: warning: import-hf: embd_pdrop={embd} differs from resid_pdrop={resid}; megagpt drops out "
              f"the embeddings and the residual stream alike: model.hidden_dropout={resid}", file=sys.stderr)
    return ModelConfig(num_layers=hf.n_layer, hidden_size=hf.n_embd, num_heads=hf.n_head,
                       ffn_hidden_size=hf.n_inner or 4 * hf.n_embd, seq_length=hf.n_positions,
                       vocab_size=hf.vocab_size, layernorm_epsilon=hf.layer_norm_epsilon, norm_position="pre",
                       attention="dense", init_std=hf.initializer_range, hidden_dropout=resid,
                       attention_dropout=getattr(hf, "attn_pdrop", 0.0))


def export_hf(checkpoint: str, out: str, tokenizer: str | None = None) -> dict:
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast

    from tokenizers import Tokenizer as HFTokenizer

    from megagpt.data.tokenizer import EOD, Tokenizer, check_tokenizer_flag
    from megagpt.generation import find_generation_tokenizer

    path = resolve_checkpoint(checkpoint)
    meta = read_meta(path)
    problem = verify(path)  # a truncated or altered shard must not become a silently wrong model
    if problem:
        raise CheckpointError(f"export-hf: checkpoint {path}: {problem}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"export-hf: --out {out} is a file, not a directory")
    cfg = from_dict(meta["config"])
    check_exportable(cfg.model)
    tokenizer = tokenizer or find_generation_tokenizer(path, cfg)
    if tokenizer is None:
        raise ConfigError(f"export-hf: no tokenizer.json found in the run dir or beside the training data of {path}; "
                          f"pass --tokenizer")
    check_tokenizer_flag(tokenizer)
    if not meta["universal"]:
        raise CheckpointError(f"export-hf: checkpoint {path} has no universal/ shards (train.universal_checkpoint=false)")
    require_language_model(path, "export-hf")
    shards = UniversalShards(path)
    full = {name: shards.full(name)["fp32"] for name in shards.names()}
    state = to_hf_state_dict(full, cfg.model)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_str(Tokenizer.load(tokenizer).to_str()),
                                     eos_token=EOD, bos_token=EOD, unk_token=EOD)
    if len(hf_tok) > cfg.model.vocab_size:
        raise ConfigError(f"export-hf: tokenizer {tokenizer} has {len(hf_tok)} tokens, the model "
                          f"model.vocab_size={cfg.model.vocab_size}")
    os.makedirs(out, exist_ok=True)
    state.pop("lm_head.weight")  # tied: transformers re-ties it to wte on load
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    gpt2_config(cfg.model, hf_tok.convert_tokens_to_ids(EOD)).save_pretrained(out)
    hf_tok.model_max_length = cfg.model.seq_length
    hf_tok.save_pretrained(out)
    return {"checkpoint": path, "step": meta["step"], "out": out}


def load_every_weight(model_class, model_dir: str):
    """from_pretrained, but a weight that is missing or of another shape is an error, never a random init."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its load report and progress bar; what matters is raised below
    hf_logging.disable_progress_bar()
    try:
        model, info = model_class.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32,
                                                  output_loading_info=True)
    except Exception as exc:  # safetensors, torch and transformers each raise their own types on a bad file
        raise DataError(f"import-hf: the weights in {model_dir} cannot be read ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:300]})") from None
    missing = [k for k in info["missing_keys"] if k != "lm_head.weight"]  # tied to wte
    mismatched = [f"{k} {tuple(a)} (expected {tuple(b)})" for k, a, b in info.get("mismatched_keys", [])]
    if missing or mismatched:
        what = [f"missing {', '.join(sorted(missing)[:5])}" if missing else "", ", ".join(mismatched[:5])]
        raise DataError(f"import-hf: {model_dir} lacks weights the config implies: {'; '.join(w for w in what if w)}"
                        f"{' ...' if len(missing) > 5 or len(mismatched) > 5 else ''}")
    return model


def import_hf(model_dir: str, run_dir: str, make_vocab_size_divisible_by: int = 128) -> dict:
    """Write <run_dir>/checkpoints/step_00000000 (weights only) and <run_dir>/model.yaml (its model section)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ConfigError(f"import-hf: {model_dir} has no config.json (not a Hugging Face model directory)")
    try:
        hf_cfg = GPT2Config.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:  # transformers' words for a malformed config.json
        raise DataError(f"import-hf: {model_dir}/config.json is not a readable model config ({exc})") from None
    if hf_cfg.model_type != "gpt2":
        raise ConfigError(f"import-hf: {model_dir} holds a {hf_cfg.model_type!r} model; only GPT-2 is supported")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"import-hf: --out {run_dir} is a file, not a directory")
    m = model_config_from_gpt2(hf_cfg)
    m.make_vocab_size_divisible_by = make_vocab_size_divisible_by
    root = checkpoint_root(run_dir)
    path = os.path.join(root, tag_for(0))
    if os.path.exists(os.path.join(root, LATEST)):
        raise ConfigError(f"import-hf: {run_dir} already holds checkpoints; give a new run directory")
    model = load_every_weight(GPT2LMHeadModel, model_dir)
    full = from_hf_state_dict(model.state_dict(), m)
    cfg = Config(model=m)
    write_universal(path, full, cfg)
    tokenizer = _import_tokenizer(model_dir, os.path.join(run_dir, "tokenizer.json"))
    import yaml

    with open(os.path.join(run_dir, "model.yaml"), "w") as f:
        yaml.safe_dump({"model": cfg.to_dict()["model"]}, f, sort_keys=False)
    atomic_write_text(os.path.join(root, LATEST), tag_for(0) + "\n")
    return {"checkpoint": path, "parameters": sum(v.numel() for k, v in model.state_dict().items()
                                                   if k != "lm_head.weight"), "tokenizer": tokenizer}


def _import_tokenizer(model_dir: str, target: str) -> Optional[str]:
    """The model directory's tokenizer, as <run_dir>/tokenizer.json where eval, generate and later stages look:
    its tokenizer.json, else GPT-2's vocab.json + merges.txt (older save_pretrained runs write only those; they were
    left behind). What was taken, or None."""
    from megagpt.data.tokenizer import GPT2_FILES, Tokenizer

    given = os.path.join(model_dir, "tokenizer.json")
    if os.path.isfile(given):
        shutil.copyfile(given, target)
        return given
    gpt2 = [os.path.join(model_dir, name) for name in GPT2_FILES]
    if all(map(os.path.isfile, gpt2)):
        Tokenizer.from_gpt2_files(*gpt2).save(target)
        return " + ".join(gpt2)
    return None
