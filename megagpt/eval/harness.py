"""lm-evaluation-harness on megagpt checkpoints: the model class "megagpt".

    megagpt eval harness --model megagpt --model_args checkpoint=RUN_DIR --tasks NAME --include_path DIR ...
    python -m megagpt.eval.harness --model megagpt --model_args checkpoint=RUN_DIR ...

lm-eval 0.4 finds models only in its own table (no plugin entry points), so the command is
lm-eval's own CLI, run after this module has registered the class; every lm_eval argument
works unchanged. Model arguments: checkpoint (a run dir or checkpoint dir), tokenizer (default:
the checkpoint's), rolling_stride (default half the context); lm_eval's --device and
--batch_size apply. One process, TP 1: lm-eval spreads requests over ranks itself, which would clash
with splitting the model.

The three request kinds map onto megagpt.eval's scorer: loglikelihood is a continuation's
log-probability and whether it was greedy (the context keeps its last tokens when the pair is
too long), loglikelihood_rolling is a document's total log-likelihood after the
end-of-document token with megagpt's perplexity windows, generate_until is greedy decoding cut
at the first stop string.
"""

from __future__ import annotations

import sys

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model


@register_model("megagpt")
class MegagptLM(LM):
    def __init__(self, checkpoint: str, tokenizer: str | None = None, device: str = "auto", batch_size: int = 8,
                 rolling_stride: int | None = None, max_batch_size=None, **unknown):
        super().__init__()
        from megagpt.errors import ConfigError
        from megagpt.eval.scorer import open_checkpoint
        from megagpt.parallel.distributed import lone_gpu

        # max_batch_size: lm_eval's, for its "auto" batch search, which megagpt's fixed batch has no use for
        if unknown:  # a misspelt argument was ignored, its default used without a word
            raise ConfigError(f"--model_args: unknown argument(s) {', '.join(sorted(unknown))} (megagpt takes "
                              f"checkpoint, tokenizer, rolling_stride; lm_eval's --device and --batch_size)")
        if rolling_stride is not None and not (str(rolling_stride).isdigit() and int(rolling_stride) >= 1):
            raise ConfigError(f"--model_args rolling_stride={rolling_stride} must be a whole number >= 1")

        device = lone_gpu(str(device))  # lm_eval's --device: cuda:0, cpu, ...
        batch = int(batch_size) if str(batch_size).isdigit() else 8  # lm_eval's --batch_size may say "auto"
        self.scorer, self.tok, _ = open_checkpoint(checkpoint, tokenizer, device, batch)
        self.rolling_stride = int(rolling_stride) if rolling_stride else max(1, self.scorer.context // 2)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [(self.tok.encode(context), self.tok.encode(continuation)) for context, continuation in
                 (r.args for r in requests)]
        return [(logp, greedy) for logp, greedy, _ in self.scorer.continuations(pairs)]

    def loglikelihood_rolling(self, requests) -> list[float]:
        from megagpt.eval.perplexity import windows

        out = []
        for (text,) in (r.args for r in requests):
            stream = [self.tok.eod] + self.tok.encode(text)
            plan = windows(len(stream), self.scorer.context, self.rolling_stride)
            scored = self.scorer.score([stream[b:e] for b, e, _ in plan])
            out.append(sum(sum(s.logprobs[-new:]) for s, (_, _, new) in zip(scored, plan)))
        return out

    def generate_until(self, requests) -> list[str]:
        import torch

        from megagpt.generation import Sampling, generate

        out = []
        for context, kwargs in (r.args for r in requests):
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = min(int(kwargs.get("max_gen_toks", 64)), self.scorer.context - 1)
            prompt = (self.tok.encode(context) or [self.tok.eod])[-(self.scorer.context - budget):]
            ids = torch.tensor([prompt], device=self.scorer.device)
            new = generate(self.scorer.model, ids, Sampling(max_new_tokens=budget, temperature=0.0),
                           eod=self.tok.eod, vocab=self.tok.vocab_size)[0, len(prompt):].tolist()
            text = self.tok.decode(new[: new.index(self.tok.eod)] if self.tok.eod in new else new)
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI with "megagpt" registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm_eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
