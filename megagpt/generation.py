"""Text generation from a checkpoint at any tensor-parallel size, with a KV cache.

    megagpt generate --checkpoint DIR --prompt TEXT [--max-new-tokens N] [--temperature T]
                     [--top-k K] [--top-p P] [--seed S] [--nproc TP]

The model is the pp = 1 module with this rank's TP shard of every weight, read from the
checkpoint's layout-free `universal/` shards, so a checkpoint of any layout loads. Each
step gathers the vocabulary-parallel logits across TP ranks; every rank then draws the
same token from the same seeded generator, so the ranks never disagree. Temperature 0
is greedy decoding. PPO rollouts (megagpt.rlhf) sample through the same `generate`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from megagpt.config import Config, from_dict
from megagpt.errors import ConfigError, on_every_rank
from megagpt.model.gpt import GPT
from megagpt.model.kv_cache import KVCache


@dataclass
class Sampling:
    max_new_tokens: Optional[int] = 64  # None: up to 64, as many as the context leaves after the prompt
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: no cut
    top_p: float = 1.0  # nucleus: the smallest set of tokens whose probability reaches top_p
    seed: int = 0

    def check(self) -> None:
        for ok, message in [(self.max_new_tokens is None or self.max_new_tokens >= 1,
                             f"--max-new-tokens={self.max_new_tokens} must be at least 1"),
                            (0 <= self.temperature < float("inf"),
                             f"--temperature={self.temperature} must be >= 0 and finite"),
                            (self.top_k >= 0, f"--top-k={self.top_k} must be >= 0"),
                            (0 < self.top_p <= 1, f"--top-p={self.top_p} must lie in (0, 1]")]:
            if not ok:
                raise ConfigError(message)


def next_token(logits: torch.Tensor, s: Sampling, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """(B,) tokens from (B, V) logits: greedy at temperature 0, else a draw after top-k and top-p cuts.

    Row i draws with generators[i] alone, so a row's tokens do not depend on which other
    rows share its batch: PPO rollouts come out the same at every data-parallel layout.
    """
    if s.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    # the largest logit first: at a tiny temperature the quotient overflows to inf - inf = NaN, which drew the
    # last token of the vocabulary; this way the leader stays at 0 and the others go to -inf (greedy, as it should)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / s.temperature
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first one always stays)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= s.top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    u = torch.stack([torch.rand((), generator=g, device=g.device) for g in generators]).to(cdf.device)
    # inverse CDF: the first token whose cumulative probability passes u (cut tokens add none)
    return torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


def full_vocab_logits(local: torch.Tensor, vocab_size: int, tp_group) -> torch.Tensor:
    """This rank's vocabulary slice (B, V/tp) -> every rank's (B, vocab_size), the padding cut off.

    A plain all_gather: megatron-core's gather allocates on CUDA only, and no gradient flows here.
    """
    tp = torch.distributed.get_world_size(tp_group) if tp_group is not None else 1
    if tp > 1:
        parts = [torch.empty_like(local) for _ in range(tp)]
        torch.distributed.all_gather(parts, local.contiguous(), group=tp_group)
        local = torch.cat(parts, dim=-1)
    return local[..., :vocab_size]


@torch.no_grad()
def generate(model: GPT, prompt: torch.Tensor, s: Sampling, eod: Optional[int] = None,
             row_seeds: Optional[Sequence[int]] = None, pad: Optional[torch.Tensor] = None,
             vocab: Optional[int] = None) -> torch.Tensor:
    """(B, T0) prompt ids -> (B, T0 + n) with n <= s.max_new_tokens new ones (stops once every row hit eod).
    Row i samples from its own generator seeded row_seeds[i] (default s.seed + i). Prompts of different
    lengths go in one batch left-padded: pad (B,) counts each row's padding columns (see KVCache). vocab: the
    ids a new token may take, the tokenizer's (default: model.vocab_size); a tokenizer smaller than the model
    has no text for the others, and its decode left them out without a word."""
    m = model.embedding.ctx.model
    ctx = model.embedding.ctx
    total = prompt.shape[1] + s.max_new_tokens
    if total > m.seq_length:
        raise ConfigError(f"prompt ({prompt.shape[1]} tokens) + --max-new-tokens={s.max_new_tokens} exceeds the "
                          f"model's context model.seq_length={m.seq_length}")
    weight = model.embedding.word_embeddings.weight
    cache = KVCache.empty(m.num_layers, prompt.shape[0], m.num_heads // ctx.tp_size, total, m.head_dim,
                          weight.dtype, weight.device, pad=pad)
    seeds = row_seeds if row_seeds is not None else [s.seed + i for i in range(prompt.shape[0])]
    generators = [torch.Generator(device=weight.device).manual_seed(int(seed)) for seed in seeds]
    model.eval()
    tokens, step_input = prompt, prompt
    finished = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for _ in range(s.max_new_tokens):
        logits = full_vocab_logits(model(step_input, cache)[:, -1], min(vocab or m.vocab_size, m.vocab_size),
                                   ctx.tp_group)
        new = next_token(logits, s, generators)
        if eod is not None:
            new = torch.where(finished, torch.full_like(new, eod), new)
            finished |= new == eod
        tokens = torch.cat([tokens, new[:, None]], dim=1)
        step_input = new[:, None]
        if eod is not None and bool(finished.all()):
            break
    return tokens


def load_model(checkpoint: str, pc, command: str = "generate") -> tuple[GPT, Config, str]:
    """The pp = 1 GPT with this rank's TP shards of the checkpoint's weights (any saved layout), for `command`."""
    from megagpt.model.layers import LayerContext
    from megagpt.train.checkpoint import read_meta, require_verified, resolve_checkpoint
    from megagpt.train.universal import copy_weights, require_language_model

    path = resolve_checkpoint(checkpoint)
    meta = read_meta(path)
    cfg = from_dict(meta["config"])
    if not meta["universal"]:
        raise ConfigError(f"{command}: checkpoint {path} has no universal/ shards (train.universal_checkpoint=false)")
    require_language_model(path, command)
    require_verified(path)
    model = GPT(LayerContext(model=cfg.model, seed=cfg.train.seed, tp_group=pc.tp_group, tp_rank=pc.tp_rank,
                             tp_size=pc.tp))
    copy_weights(model, path, pc)
    return model.to(pc.device), cfg, path


def find_generation_tokenizer(checkpoint_path: str, cfg: Config) -> Optional[str]:
    """The run directory's tokenizer.json (every training stage keeps its tokenizer there, as import-hf
    does), else the training data's."""
    from megagpt.data.checks import find_tokenizer
    from megagpt.train.checkpoint import META

    step = os.path.abspath(checkpoint_path)
    if os.path.isfile(os.path.join(os.path.dirname(step), META)):  # a PPO role: <run>/checkpoints/step_N/actor
        step = os.path.dirname(step)
    root = os.path.dirname(step)
    # only a checkpoint in its own run's checkpoints/ has a run dir (not one copied elsewhere, nor one set aside)
    beside = os.path.join(os.path.dirname(root), "tokenizer.json") if os.path.basename(root) == "checkpoints" else None
    if beside and os.path.isfile(beside):
        return beside
    try:
        return find_tokenizer(cfg)
    except ConfigError:  # its training data, named relative to where it trained, cannot be read from here
        return None


def generation_tokenizer(checkpoint_path: str, cfg: Config, given: Optional[str] = None):
    """The Tokenizer a checkpoint's model reads: `given` (--tokenizer), else find_generation_tokenizer's; one
    with more tokens than the model is refused (its ids would index past the embeddings, or the wrong ones)."""
    from megagpt.data.tokenizer import Tokenizer

    found = given or find_generation_tokenizer(checkpoint_path, cfg)
    if found is None:
        raise on_every_rank(ConfigError(f"no tokenizer found for checkpoint {checkpoint_path} (none in its run dir or "
                                        f"beside its training data): pass --tokenizer"))
    tok = Tokenizer.load(found)
    if tok.vocab_size > cfg.model.vocab_size:
        which = f"--tokenizer {given}" if given else f"the tokenizer found for {checkpoint_path} ({found})"
        raise on_every_rank(ConfigError(
            f"{which} has {tok.vocab_size} tokens but the checkpoint's model.vocab_size is {cfg.model.vocab_size}: "
            f"another tokenizer's ids would index the wrong embeddings"))
    return tok


def check_layout(cfg: Config, tp: int, command: str = "generate") -> None:
    m = cfg.model
    for what, size in (("model.num_heads", m.num_heads), ("the MLP width", m.ffn_size),
                       ("the padded vocab", m.padded_vocab_size)):
        if size % tp:
            raise ConfigError(f"{command}: --nproc {tp} (tensor-parallel ranks) must divide {what} {size}")


def checkpoint_config(checkpoint: str) -> tuple[str, Config]:
    from megagpt.train.checkpoint import read_meta, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    return path, from_dict(read_meta(path)["config"])


def run_generation(checkpoint: str, prompt: str, s: Sampling, tokenizer: Optional[str] = None,
                   device: str = "auto") -> Optional[str]:
    """One rank of a generation world (every rank one TP shard); rank 0 returns the completion."""
    import torch.distributed as dist

    from megagpt.parallel.distributed import init_distributed, shutdown_distributed
    from megagpt.parallel.topology import build_parallel_context

    rank_device = init_distributed(device, deepspeed_comm=False)
    pc = build_parallel_context(dist.get_world_size(), 1, rank_device)
    model, cfg, path = load_model(checkpoint, pc)  # path: the checkpoint dir a run dir resolved to
    tok = generation_tokenizer(path, cfg, tokenizer)
    ids = tok.encode(prompt) or [tok.eod]  # no prompt: an unconditional sample, begun as a new document (GPT-2's)
    if s.max_new_tokens is None:  # what the context leaves
        if len(ids) >= cfg.model.seq_length:
            raise ConfigError(f"the prompt ({len(ids)} tokens) fills the model's context model.seq_length="
                              f"{cfg.model.seq_length}: no room is left to generate; shorten it")
        s = dataclasses.replace(s, max_new_tokens=min(64, cfg.model.seq_length - len(ids)))
    out = generate(model, torch.tensor([ids], device=pc.device), s, eod=tok.eod, vocab=tok.vocab_size)
    out = out[0, len(ids):].tolist()
    shutdown_distributed()
    completion = tok.decode(out[: out.index(tok.eod)] if tok.eod in out else out)
    return completion if pc.rank == 0 else None
