"""Supervised fine-tuning (InstructGPT §3.5): a pretrained GPT trained on demonstrations.

    megagpt sft --config PATH [--nproc N] [key=value ...]

Demonstrations are JSONL lines {"prompt": ..., "response": ...}. A sample is
prompt + response + <|endoftext|>, cut to model.seq_length + 1 tokens; the loss counts
only the tokens the model must produce (the response and its end), never the prompt. The
run is the pretraining loop (any layout, checkpoints, resume, preemption) with these
samples and the weights of `sft.init`; a demonstration whose prompt leaves no room for
its response is counted and left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megagpt.config import Config
from megagpt.errors import DataError, on_every_rank
from megagpt.data.tokenizer import keep_tokenizer
from megagpt.rlhf.data import checkpoint_tokenizer, epoch_item, read_demonstrations, split


@dataclass
class Demonstration:
    prompt: list[int]
    response: list[int]


class DemonstrationDataset:
    """Samples of demonstrations, in a seeded order reshuffled every epoch (as GPTDataset does for text)."""

    def __init__(self, demos: list[Demonstration], seq_length: int, eod: int, num_samples: int, seed: int):
        if not demos:
            raise DataError("no demonstrations in this split")
        self.demos, self.seq_length, self.eod = demos, seq_length, eod
        self.num_samples, self.seed = num_samples, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        demo = epoch_item(self.demos, index, self.seed)
        ids = (demo.prompt + demo.response + [self.eod])[: self.seq_length + 1]
        targets = torch.zeros(self.seq_length + 1, dtype=torch.float32)
        targets[len(demo.prompt):len(ids)] = 1.0  # the response and its end: what the model must produce
        padded = torch.full((self.seq_length + 1,), self.eod, dtype=torch.int64)
        padded[:len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return {"tokens": padded[:-1], "labels": padded[1:], "loss_mask": targets[1:]}


def tokenize_demonstrations(cfg: Config, tokenizer) -> tuple[list[Demonstration], int]:
    """The demonstrations as token ids, and how many were left out (prompt fills the whole context)."""
    demos, too_long = [], 0
    for prompt, response in read_demonstrations(cfg.sft.data):
        p = tokenizer.encode(prompt) or [tokenizer.eod]  # no prompt: a document's start, as generate begins one
        if len(p) >= cfg.model.seq_length:
            too_long += 1
            continue
        demos.append(Demonstration(p, tokenizer.encode(response)))
    return demos, too_long


def sft(cfg: Config) -> None:
    """One rank of `megagpt sft`."""
    from megagpt.data.tokenizer import Tokenizer
    from megagpt.parallel.distributed import launched_as_rank_zero
    from megagpt.train.pretrain import Task, pretrain

    tokenizer = Tokenizer.load(checkpoint_tokenizer(cfg.sft.init, cfg.sft.tokenizer))
    demos, too_long = tokenize_demonstrations(cfg, tokenizer)
    long = f" ({too_long} left out: a prompt that fills model.seq_length={cfg.model.seq_length})" if too_long else ""
    if too_long and launched_as_rank_zero():
        print(f"megagpt sft: left out {too_long} demonstrations whose prompt fills model.seq_length="
              f"{cfg.model.seq_length}", flush=True)
    train, valid = split(demos, cfg.sft.valid_fraction, cfg.train.seed)
    if not train:  # (every rank reads and splits alike)
        raise on_every_rank(DataError(f"sft.valid_fraction={cfg.sft.valid_fraction} of {len(demos)} demonstrations"
                                      f"{long} leaves none to train on"))
    if cfg.train.eval_interval and not valid:
        raise on_every_rank(DataError(
            f"sft.valid_fraction={cfg.sft.valid_fraction} holds out none of {len(demos)} demonstrations{long}, but "
            f"train.eval_interval={cfg.train.eval_interval} asks for a held-out loss"))

    def datasets(cfg: Config, train_samples: int, valid_samples: int):
        seq, eod, seed = cfg.model.seq_length, tokenizer.eod, cfg.train.seed
        held_out = DemonstrationDataset(valid or train, seq, eod, valid_samples, seed + 1)  # unused without eval
        return DemonstrationDataset(train, seq, eod, train_samples, seed), held_out

    pretrain(cfg, datasets=datasets, init_from=cfg.sft.init, task=Task(name="sft"))


def preflight_sft(cfg: Config) -> None:
    """Before any process starts: the demonstrations read, and the init checkpoint fits the model."""
    from megagpt.train.checkpoint import check_shape, read_meta, resolve_init
    from megagpt.train.universal import require_language_model

    read_demonstrations(cfg.sft.data)
    path = resolve_init("sft.init", cfg.sft.init, cfg.run.dir)
    require_language_model(path, "sft.init")
    keep_tokenizer(checkpoint_tokenizer(cfg.sft.init, cfg.sft.tokenizer), cfg.run.dir)
    check_shape(read_meta(path), cfg, path)
