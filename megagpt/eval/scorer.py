"""Log-likelihoods of token sequences under a checkpoint, on one TP group.

Every evaluation reduces to this: the log-probability of each token of a sequence given the
tokens before it, and whether it was the model's greedy choice. Sequences are scored in
right-padded batches of at most the model's context; the vocabulary stays split over the TP
ranks (megagpt.model.vocab_parallel), and every rank returns the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from megagpt.model.gpt import GPT
from megagpt.model.vocab_parallel import token_logprobs


@dataclass
class Scored:
    logprobs: list[float]  # of tokens 1.. of the sequence, each given those before it
    greedy: list[bool]  # whether each was the argmax of its distribution


class Scorer:
    def __init__(self, model: GPT, bos: int, batch_size: int = 8):
        """bos: the token a continuation with no context is scored after (the end-of-document token,
        which precedes every document in training, as GPT-2 did)."""
        self.model, self.bos, self.batch_size = model, bos, batch_size
        self.ctx = model.embedding.ctx
        self.context = self.ctx.model.seq_length
        self.device = model.embedding.word_embeddings.weight.device
        model.eval()

    @torch.no_grad()
    def score(self, sequences: list[list[int]]) -> list[Scored]:
        """Each sequence (at most the context, at least 2 tokens) scored token by token."""
        out = []
        for i in range(0, len(sequences), self.batch_size):
            out += self._batch(sequences[i:i + self.batch_size])
        return out

    def _batch(self, batch: list[list[int]]) -> list[Scored]:
        for ids in batch:
            if not 2 <= len(ids) <= self.context:
                raise ValueError(f"a scored sequence has {len(ids)} tokens; it needs 2 to {self.context}")
        width = max(len(ids) for ids in batch)
        tokens = torch.zeros(len(batch), width, dtype=torch.long, device=self.device)
        for row, ids in enumerate(batch):
            tokens[row, :len(ids)] = torch.tensor(ids, device=self.device)
        logits = self.model(tokens)[:, :-1]  # (B, T-1, V/tp): right padding cannot reach the real tokens
        labels = tokens[:, 1:]
        vocab = self.ctx.model.vocab_size
        logp = token_logprobs(logits, labels, self.ctx.tp_group, vocab)
        greedy = _is_argmax(logits, labels, self.ctx.tp_group, vocab)
        return [Scored(logp[row, :len(ids) - 1].tolist(), greedy[row, :len(ids) - 1].tolist())
                for row, ids in enumerate(batch)]

    def continuation(self, context: list[int], continuation: list[int]) -> tuple[float, bool, int]:
        """(log p(continuation | context), every continuation token greedy, its token count); the context
        loses tokens from its start when the two exceed the model's context, as GPT-3's evaluation did."""
        return self.continuations([(context, continuation)])[0]

    def continuations(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool, int]]:
        sequences, spans = [], []
        for context, continuation in pairs:
            if not continuation:
                raise ValueError("an empty continuation has no likelihood")
            ids = ((context or [self.bos]) + continuation)[-self.context:]
            sequences.append(ids)
            spans.append(min(len(continuation), len(ids) - 1))
        scored = self.score(sequences)
        return [(sum(s.logprobs[-n:]), all(s.greedy[-n:]), n) for s, n in zip(scored, spans)]


def _is_argmax(logits: torch.Tensor, labels: torch.Tensor, group, vocab_size: int) -> torch.Tensor:
    """(B, T) whether labels[b, t] has the largest logit of the real vocabulary, across the TP ranks."""
    tp = dist.get_world_size(group) if group is not None else 1
    rank = dist.get_rank(group) if group is not None else 0
    part = logits.shape[-1]
    first = rank * part
    real = torch.arange(first, first + part, device=logits.device) < vocab_size
    logits = logits.float().masked_fill(~real, float("-inf"))
    peak = logits.amax(dim=-1)
    local = labels - first
    mine = (local >= 0) & (local < part)
    picked = logits.gather(-1, local.clamp(0, part - 1).unsqueeze(-1)).squeeze(-1)
    picked = torch.where(mine, picked, torch.full_like(picked, float("-inf")))
    if tp > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
        dist.all_reduce(picked, op=dist.ReduceOp.MAX, group=group)
    return picked >= peak


def open_checkpoint(checkpoint: str, tokenizer: str | None, device: str = "auto", batch_size: int = 8):
    """(Scorer, Tokenizer, ParallelContext) for one rank of an evaluation world: every rank one TP shard of
    the checkpoint's weights (any saved layout), pp = 1, no data parallelism."""
    from megagpt.generation import generation_tokenizer, load_model
    from megagpt.parallel.distributed import init_distributed
    from megagpt.parallel.topology import build_parallel_context

    if dist.is_initialized():  # a host that made the world already (lm-evaluation-harness in a test, say)
        from megagpt.parallel.distributed import device_for_local_rank, local_world_size, resolve_device

        rank_device = device_for_local_rank(resolve_device(device, local_world_size()))
    else:
        rank_device = init_distributed(device, deepspeed_comm=False)
    pc = build_parallel_context(dist.get_world_size(), 1, rank_device)
    model, cfg, path = load_model(checkpoint, pc, "eval")
    tok = generation_tokenizer(path, cfg, tokenizer)  # refuses one with more tokens than the model
    return Scorer(model, bos=tok.eod, batch_size=batch_size), tok, pc
