"""Perplexity over a corpus with a sliding window, as GPT-2 reported it.

    megagpt eval perplexity --checkpoint DIR --data PATH... [--stride S] [--tokenizer JSON] [--nproc TP]

The data (Megatron .bin/.idx shards, or .txt / .jsonl[.gz] files tokenized with the
checkpoint's tokenizer, each document followed by the end-of-document token as in training)
are read as one token stream after an end-of-document token, so every token of the data is
scored. Windows of the model's context advance by `stride` tokens (at most context − 1, so
that a window's first new token has one before it); each scores only the tokens no earlier
window scored, so every token after the first window sees at least context − stride tokens
before it (stride = context: blocks overlapping by one token; smaller: more context, more
compute). Reported: tokens, mean negative log-likelihood (nats), perplexity, bits per
token and bits per UTF-8 byte of the decoded text (comparable across tokenizers).
"""

from __future__ import annotations

import math

from megagpt.errors import ConfigError
from megagpt.eval.scorer import Scorer


def read_stream(paths: list[str], tok) -> list[int]:
    """Every document's tokens, each followed by the end-of-document token, after a leading one."""
    from megagpt.data.shards import source_documents

    stream = [tok.eod]
    for doc in source_documents(paths, "--data", tok):  # a shard's documents end in the end-of-document token already
        if isinstance(doc, str) and doc:  # an empty text is no document, as in a shard (write_shard)
            stream += tok.encode(doc) + [tok.eod]
        elif not isinstance(doc, str):
            stream += doc
    if len(stream) < 2:
        raise ConfigError(f"--data {' '.join(paths)}: no tokens to score")
    if max(stream) >= tok.vocab_size:
        raise ConfigError(f"--data {' '.join(paths)}: token id {max(stream)} is outside the tokenizer's "
                          f"{tok.vocab_size} tokens (shards made with another tokenizer?)")
    return stream


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, new) per window over a stream of n tokens: score ids[begin:end], keep the last `new`."""
    if not 1 <= stride <= context:
        raise ConfigError(f"--stride {stride} must lie in [1, the model's context {context}]")
    out, scored_to, begin = [], 1, 0
    while scored_to < n:
        end = min(begin + context, n)
        out.append((begin, end, end - scored_to))
        scored_to = end
        begin = min(begin + stride, scored_to - 1)  # the next token to score needs one before it in its window
    return out


def perplexity(scorer: Scorer, tok, stream: list[int], stride: int) -> dict:
    plan = windows(len(stream), scorer.context, stride)
    nll = 0.0
    for i in range(0, len(plan), scorer.batch_size):
        chunk = plan[i:i + scorer.batch_size]
        for (begin, end, new), scored in zip(chunk, scorer.score([stream[b:e] for b, e, _ in chunk])):
            nll -= sum(scored.logprobs[-new:])
    tokens = len(stream) - 1
    text_bytes = len(tok.decode(stream[1:]).encode("utf-8"))
    return {"tokens": tokens, "bytes": text_bytes, "windows": len(plan), "stride": stride, "nll": nll / tokens,
            "perplexity": math.exp(nll / tokens), "bits_per_token": nll / tokens / math.log(2),
            "bits_per_byte": nll / math.log(2) / max(text_bytes, 1)}
