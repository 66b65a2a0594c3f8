"""The reward model (InstructGPT §3.5): the SFT model with a scalar head, trained on ranked responses.

    megagpt rm --config PATH [--nproc N] [key=value ...]

A comparison is a prompt and K = 2..9 responses ranked best first. Each sample holds all
K of one prompt (padded to the file's largest K), so the C(K,2) pairs of a prompt share
one batch element, as InstructGPT did to avoid overfitting on correlated pairs:

    loss(prompt) = -1/C(K,2) * sum over pairs (w ranked above l) of log sigmoid(r(x, y_w) - r(x, y_l))

r(x, y) is the scalar head's output at the final token of prompt + response +
<|endoftext|>. The run is the pretraining loop (TP x DP, checkpoints, resume,
preemption) with this loss, from `rm.init`'s weights. After the last step the reward is
shifted (the head's bias) so the SFT demonstrations score 0 on average, which the loss
cannot see (it only compares responses); `<run.dir>/reward_model.json` then reports the
pairwise accuracy on held-out comparisons and the shift.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megagpt.config import Config
from megagpt.errors import DataError, on_every_rank
from megagpt.data.tokenizer import keep_tokenizer
from megagpt.model.gpt import ScalarGPT, at_positions
from megagpt.rlhf.data import checkpoint_tokenizer, epoch_item, read_comparisons, read_demonstrations, split

REPORT = "reward_model.json"


@dataclass
class Comparison:
    prompt: list[int]
    responses: list[list[int]]  # best first

    def sequences(self, eod: int) -> list[list[int]]:
        return [self.prompt + r + [eod] for r in self.responses]


def rm_loss(values: torch.Tensor, labels) -> torch.Tensor:
    """values (B, K, T) of the scalar head; labels: (final token index (B, K), response present (B, K))."""
    last, present = labels
    rewards = at_positions(values, last.long())  # (B, K)
    k = rewards.shape[1]
    better = torch.ones(k, k, dtype=torch.bool, device=rewards.device).triu(diagonal=1)  # i ranked above j
    pairs = better & (present[:, :, None] > 0) & (present[:, None, :] > 0)  # (B, K, K)
    margins = rewards[:, :, None] - rewards[:, None, :]
    per_prompt = -(F.logsigmoid(margins) * pairs).sum(dim=(1, 2)) / pairs.sum(dim=(1, 2)).clamp(min=1)
    return per_prompt.mean()


def pad(sequences: list[list[int]], length: int, eod: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, length) tokens padded with eod after each sequence, and each one's final index (N,)."""
    tokens = torch.full((len(sequences), length), eod, dtype=torch.int64)
    for i, seq in enumerate(sequences):
        tokens[i, :len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return tokens, torch.tensor([len(s) - 1 for s in sequences], dtype=torch.int64)


class ComparisonDataset:
    """Samples of comparisons, in a seeded order reshuffled every epoch; every sample holds k_max rows."""

    def __init__(self, comparisons: list[Comparison], seq_length: int, eod: int, k_max: int, num_samples: int,
                 seed: int):
        if not comparisons:
            raise DataError("no comparisons in this split")
        self.items, self.seq_length, self.eod, self.k_max = comparisons, seq_length, eod, k_max
        self.num_samples, self.seed = num_samples, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        sequences = epoch_item(self.items, index, self.seed).sequences(self.eod)
        present = torch.zeros(self.k_max)
        present[:len(sequences)] = 1.0
        sequences += [[self.eod]] * (self.k_max - len(sequences))
        tokens, last = pad(sequences, self.seq_length, self.eod)
        return {"tokens": tokens, "labels": last, "loss_mask": present}


def tokenize_comparisons(path: str, tokenizer, seq_length: int) -> tuple[list[Comparison], int]:
    """The comparisons as ids, and how many were left out (a response that does not fit the context)."""
    kept, too_long = [], 0
    for prompt, responses in read_comparisons(path):
        c = Comparison(tokenizer.encode(prompt), [tokenizer.encode(r) for r in responses])
        if max(map(len, c.sequences(tokenizer.eod))) > seq_length:
            too_long += 1
            continue
        kept.append(c)
    return kept, too_long


@torch.no_grad()
def final_rewards(model: ScalarGPT, sequences: list[list[int]], seq_length: int, eod: int, device,
                  batch: int) -> torch.Tensor:
    """r(x, y) of each sequence (prompt + response + eod), scored `batch` at a time."""
    out = []
    for i in range(0, len(sequences), batch):
        tokens, last = pad(sequences[i:i + batch], seq_length, eod)
        out.append(at_positions(model(tokens.to(device)), last.to(device)))
    return torch.cat(out) if out else torch.zeros(0, device=device)


def _dp_sums(values: list[float], pc) -> list[float]:
    total = torch.tensor(values, dtype=torch.float64, device=pc.device)
    if pc.dp > 1:
        dist.all_reduce(total, group=pc.dp_group)
    return total.tolist()


def held_out_accuracy(model, comparisons: list[Comparison], cfg: Config, eod: int, pc) -> tuple[float, int]:
    """The share of held-out pairs ranked as the labellers did, and the number of pairs."""
    correct = pairs = 0
    for c in comparisons[pc.dp_rank::pc.dp]:
        r = final_rewards(model, c.sequences(eod), cfg.model.seq_length, eod, pc.device, cfg.train.micro_batch_size)
        k = len(c.responses)
        correct += sum(int(r[i] > r[j]) for i in range(k) for j in range(i + 1, k))
        pairs += k * (k - 1) // 2
    correct, pairs = _dp_sums([correct, pairs], pc)
    return correct / max(pairs, 1), int(pairs)


def mean_reward(model, sequences: list[list[int]], cfg: Config, eod: int, pc) -> float:
    mine = sequences[pc.dp_rank::pc.dp]
    r = final_rewards(model, mine, cfg.model.seq_length, eod, pc.device, cfg.train.micro_batch_size)
    total, count = _dp_sums([float(r.sum()), len(mine)], pc)
    return total / count


def demonstration_sequences(path: str, tokenizer, seq_length: int) -> list[list[int]]:
    sequences = [tokenizer.encode(p) + tokenizer.encode(r) + [tokenizer.eod] for p, r in read_demonstrations(path)]
    fitting = [s for s in sequences if len(s) <= seq_length]
    if not fitting:
        raise DataError(f"{path}: no demonstration fits model.seq_length={seq_length} to centre the reward on")
    return fitting


def finish(held_out: list[Comparison], demos: list[list[int]], eod: int):
    """The last step of `megagpt rm`: centre the reward on the demonstrations, then measure and report."""
    from megagpt.train.universal import assign

    def run(engine, pc, cfg: Config) -> str:
        from deepspeed.utils import safe_get_full_fp32_param

        model = engine.module
        model.eval()
        shift = mean_reward(model, demos, cfg, eod, pc)
        bias = model.value_head.bias
        assign(bias, safe_get_full_fp32_param(bias) - shift)
        accuracy, pairs = held_out_accuracy(model, held_out, cfg, eod, pc)
        report = {"pairwise_accuracy": accuracy, "held_out_pairs": pairs, "held_out_comparisons": len(held_out),
                  "reward_shift": -shift, "demonstrations": len(demos),
                  "demonstration_mean_reward": mean_reward(model, demos, cfg, eod, pc)}
        model.train()
        if dist.get_rank() == 0:
            with open(os.path.join(cfg.run.dir, REPORT), "w") as f:
                json.dump(report, f, indent=1)
        return (f"megagpt rm: pairwise accuracy {accuracy:.3f} on {pairs} held-out pairs; reward shifted by "
                f"{-shift:+.4f} so the {len(demos)} demonstrations average {report['demonstration_mean_reward']:+.2e}")

    return run


def rm(cfg: Config) -> None:
    """One rank of `megagpt rm`."""
    from megagpt.data.tokenizer import Tokenizer
    from megagpt.parallel.distributed import launched_as_rank_zero
    from megagpt.train.pretrain import Task, pretrain

    tokenizer = Tokenizer.load(checkpoint_tokenizer(cfg.rm.init, cfg.rm.tokenizer))
    comparisons, too_long = tokenize_comparisons(cfg.rm.data, tokenizer, cfg.model.seq_length)
    long = f" ({too_long} left out: a response longer than model.seq_length={cfg.model.seq_length})" if too_long else ""
    if too_long and launched_as_rank_zero():  # the process group comes with pretrain(), below
        print(f"megagpt rm: left out {too_long} comparisons with a response longer than model.seq_length="
              f"{cfg.model.seq_length}", flush=True)
    train, valid = split(comparisons, cfg.rm.valid_fraction, cfg.train.seed)
    if not valid or not train:  # (every rank reads and splits alike)
        raise on_every_rank(DataError(
            f"rm.valid_fraction={cfg.rm.valid_fraction} of {len(comparisons)} comparisons{long} leaves {len(train)} "
            f"to train on and {len(valid)} to measure pairwise accuracy on; both need some"))
    demos = demonstration_sequences(cfg.rm.demonstrations, tokenizer, cfg.model.seq_length)
    k_max = max(len(c.responses) for c in comparisons)

    def datasets(cfg: Config, train_samples: int, valid_samples: int):
        seq, eod, seed = cfg.model.seq_length, tokenizer.eod, cfg.train.seed
        return (ComparisonDataset(train, seq, eod, k_max, train_samples, seed),
                ComparisonDataset(valid, seq, eod, k_max, valid_samples, seed + 1))

    task = Task(name="rm", model=ScalarGPT, loss=rm_loss, new_parameters=("value_head.",),
                finish=finish(valid, demos, tokenizer.eod), sequences_per_sample=k_max)
    pretrain(cfg, datasets=datasets, init_from=cfg.rm.init, task=task)


def preflight_rm(cfg: Config) -> None:
    """Before any process starts: the files read, and the init checkpoint fits the model."""
    from megagpt.train.checkpoint import check_shape, read_meta, resolve_init
    from megagpt.train.universal import require_language_model

    comparisons = read_comparisons(cfg.rm.data)
    repeats = len(comparisons) - len({(p, tuple(r)) for p, r in comparisons})
    if repeats:  # a held-out comparison may then be a trained one: the pairwise accuracy would flatter the model
        print(f"megagpt rm: warning: {repeats} of the {len(comparisons)} comparisons in {cfg.rm.data} repeat an "
              f"earlier one; the held-out pairwise accuracy counts those the model also trained on", file=sys.stderr,
              flush=True)
    read_demonstrations(cfg.rm.demonstrations)
    path = resolve_init("rm.init", cfg.rm.init, cfg.run.dir)
    require_language_model(path, "rm.init")  # the reward model's head is new: it starts from the SFT model
    keep_tokenizer(checkpoint_tokenizer(cfg.rm.init, cfg.rm.tokenizer), cfg.run.dir)
    check_shape(read_meta(path), cfg, path)
