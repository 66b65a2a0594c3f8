"""GPT-1's supervised fine-tuning (Radford et al. 2018, §3.2-3.3): a pretrained GPT, a linear head on
the extract token's final hidden state, and the task's input turned into token sequences.

    megagpt finetune --config PATH [--nproc N] [key=value ...]

Three tokens are added (GPT-1's randomly initialised start, delimiter and extract tokens), ids
V .. V + 2 for the checkpoint's vocabulary of V: the run's model.vocab_size is V + 3 (its
run.dir/config.yaml keeps the V given, to be reused as --config), and when
the padded vocabulary must grow for them, the new rows are drawn N(0, init_std) (the same at
every layout) while the checkpoint fills the rest. The transforms (GPT-1's Figure 1), with the
records each task reads (JSONL, one per line, "label" an integer):

    classification   {"text", "label"}                  <s> text <e>
    entailment       {"premise", "hypothesis", "label"} <s> premise $ hypothesis <e>
    similarity       {"text_a", "text_b", "label"}      <s> a $ b <e> and <s> b $ a <e>: the two
                                                        extract states added before the head
    multiple_choice  {"context", "choices", "label"}    <s> context $ choice <e> per choice, a
                                                        score each, softmax over the choices

The loss is L3 = L2 + λ·L1 (finetune.lm_coef, GPT-1's λ = 0.5): the head's cross entropy plus
the language-modelling loss over the task's own text (next-token prediction on every sequence,
the added tokens never a target). The run is the pretraining loop (TP × DP, checkpoints,
resume), from finetune.init's weights; after the last step `<run.dir>/finetune.json` gives the
accuracy on finetune.test. A record whose sequence does not fit model.seq_length is counted and
left out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megagpt.config import Config
from megagpt.errors import DataError
from megagpt.model.gpt import GPT
from megagpt.model.layers import LayerContext
from megagpt.model.vocab_parallel import token_logprobs

REPORT = "finetune.json"
FIELDS = {"classification": ("text",), "entailment": ("premise", "hypothesis"), "similarity": ("text_a", "text_b"),
          "multiple_choice": ("context",)}


@dataclass
class Example:
    sequences: list[list[int]]  # one per ordering or choice, each ending in the extract token
    label: int


ADDED = 3  # start, delimiter, extract


def with_added_tokens(cfg: Config) -> Config:
    """The run's config: the checkpoint's vocabulary plus GPT-1's three tokens (model.vocab_size is the
    checkpoint's in the user's config, as for every stage that starts from a checkpoint)."""
    import dataclasses

    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=cfg.model.vocab_size + ADDED))


def special_tokens(base_vocab: int) -> tuple[int, int, int]:
    """(start, delimiter, extract) ids after a vocabulary of base_vocab tokens."""
    return base_vocab, base_vocab + 1, base_vocab + 2


def read_examples(path: str, task: str, num_labels: int) -> list[dict]:
    """The task's records, each checked; a malformed one stops the run with its file and line."""
    from megagpt.rlhf.data import read_records

    def parse(row: dict) -> dict:
        for key in FIELDS[task]:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(f'needs a non-empty string field "{key}"')
        label = row.get("label")
        if not isinstance(label, int) or isinstance(label, bool):
            raise ValueError(f'needs an integer "label", got {label!r}')
        if task == "multiple_choice":
            choices = row.get("choices")
            if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
                raise ValueError('needs "choices": two or more non-empty strings')
            if not 0 <= label < len(choices):
                raise ValueError(f'"label" {label} is not the index of one of its {len(choices)} choices')
        elif not 0 <= label < num_labels:
            raise ValueError(f'"label" {label} is outside 0..{num_labels - 1} (finetune.num_labels={num_labels})')
        return row

    return read_records(path, parse, f"{task} records")


def transform(row: dict, task: str, tok, start: int, delim: int, extract: int) -> Example:
    """GPT-1's input transformation of one record (module docstring)."""
    enc = tok.encode
    if task == "classification":
        return Example([[start, *enc(row["text"]), extract]], row["label"])
    if task == "entailment":
        return Example([[start, *enc(row["premise"]), delim, *enc(row["hypothesis"]), extract]], row["label"])
    if task == "similarity":
        a, b = enc(row["text_a"]), enc(row["text_b"])
        return Example([[start, *a, delim, *b, extract], [start, *b, delim, *a, extract]], row["label"])
    context = enc(row["context"])
    return Example([[start, *context, delim, *enc(choice), extract] for choice in row["choices"]], row["label"])


class ClassifierGPT(GPT):
    """The GPT with a linear head on the final hidden states (GPT-1's W_y), replicated on every TP rank.
    forward(tokens (B, C, T)) -> (LM logits of this rank's vocabulary slice (B, C, T, V/tp), the head at every
    position (B, C, T, outputs)); the loss reads the head at the extract positions."""

    def __init__(self, ctx: LayerContext, outputs: int):
        super().__init__(ctx)
        self.head = nn.Linear(ctx.model.hidden_size, outputs)
        ctx.init_layer(self.head, "finetune_head", ctx.model.init_std)

    def forward(self, tokens: torch.Tensor):
        lead, t = tokens.shape[:-1], tokens.shape[-1]
        x = self.embedding(tokens.reshape(-1, t))
        for block in self.blocks:
            x = block(x)
        hidden = self.final_norm(x)
        return self.embedding.logits(hidden).reshape(*lead, t, -1), self.head(hidden).reshape(*lead, t, -1)


def classifier_model(task: str, num_labels: int):
    """The model class the training loop builds from a LayerContext."""
    outputs = 1 if task == "multiple_choice" else num_labels
    return lambda ctx: ClassifierGPT(ctx, outputs)


def class_logits(head: torch.Tensor, extract_at: torch.Tensor, present: torch.Tensor, task: str) -> torch.Tensor:
    """(B, classes) from the head's outputs (B, C, T, k) read at extract_at (B, C); absent choices score -inf.
    Similarity adds its two orderings' outputs: GPT-1 adds their states before the (linear) head, the same
    model with the bias counted twice."""
    index = extract_at.long()[..., None, None].expand(*extract_at.shape, 1, head.shape[-1])
    at_extract = head.gather(2, index).squeeze(2)  # (B, C, k)
    if task == "multiple_choice":
        return at_extract.squeeze(-1).masked_fill(present <= 0, float("-inf"))  # (B, C): a score per choice
    return at_extract.sum(dim=1)  # (B, classes); C = 1 but for similarity


def finetune_loss(task: str, lm_coef: float, vocab_size: int, tp_group):
    """L3 = L2 + lm_coef * L1 over a micro-batch (the sample layout is FinetuneDataset's)."""

    def loss(output, labels) -> torch.Tensor:
        logits, head = output
        targets, mask = labels
        t = logits.shape[2]
        lm_targets, extract_at, label = targets[..., :t], targets[..., t], targets[:, 0, t + 1]
        lm_mask, present = mask[..., :t], mask[..., t]
        l2 = F.cross_entropy(class_logits(head, extract_at, present, task).float(), label.long())
        if not lm_coef:
            return l2
        logp = token_logprobs(logits, lm_targets.long(), tp_group, vocab_size)
        l1 = -(logp * lm_mask).sum() / lm_mask.sum().clamp(min=1.0)
        return l2 + lm_coef * l1

    return loss


class FinetuneDataset:
    """Samples of examples in a seeded order reshuffled every epoch. A sample is C_max sequences padded to
    model.seq_length; "labels" (C_max, T + 2) holds the next-token targets, then the extract position and the
    label, "loss_mask" (C_max, T + 1) which targets the LM loss counts (real text only), then which rows exist."""

    def __init__(self, examples: list[Example], seq_length: int, pad: int, first_special: int, num_samples: int,
                 seed: int):
        if not examples:
            raise DataError("no fine-tuning examples in this split")
        self.examples, self.seq_length, self.pad, self.first_special = examples, seq_length, pad, first_special
        self.c_max = max(len(e.sequences) for e in examples)
        self.num_samples, self.seed = num_samples, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        from megagpt.rlhf.data import epoch_item

        return self.sample(epoch_item(self.examples, index, self.seed))

    def sample(self, example: Example) -> dict:
        t = self.seq_length
        tokens = torch.full((self.c_max, t), self.pad, dtype=torch.int64)
        labels = torch.zeros((self.c_max, t + 2), dtype=torch.int64)
        mask = torch.zeros((self.c_max, t + 1))
        for row, seq in enumerate(example.sequences):
            ids = torch.tensor(seq, dtype=torch.int64)
            tokens[row, :len(seq)] = ids
            labels[row, :len(seq) - 1] = ids[1:]
            mask[row, :len(seq) - 1] = (ids[1:] < self.first_special).float()  # the added tokens are not language
            labels[row, t] = len(seq) - 1
            mask[row, t] = 1.0
        labels[:, t + 1] = example.label
        return {"tokens": tokens, "labels": labels, "loss_mask": mask}


def prepare(cfg: Config, path: str, tok) -> tuple[list[Example], int]:
    """The file's examples as sequences (cfg: the user's, the checkpoint's vocabulary), and how many did
    not fit the context."""
    start, delim, extract = special_tokens(cfg.model.vocab_size)
    f = cfg.finetune
    kept, too_long, shortest = [], 0, None
    for row in read_examples(path, f.task, f.num_labels):
        example = transform(row, f.task, tok, start, delim, extract)
        length = max(map(len, example.sequences))
        if length > cfg.model.seq_length:
            too_long += 1
            shortest = length if shortest is None else min(shortest, length)
            continue
        kept.append(example)
    if not kept:
        raise DataError(f"{path}: none of its {too_long} records fits model.seq_length={cfg.model.seq_length} "
                        f"(the shortest takes {shortest} tokens with GPT-1's start, delimiter and extract tokens)")
    return kept, too_long


@torch.no_grad()
def accuracy(model: ClassifierGPT, dataset: FinetuneDataset, examples: list[Example], cfg: Config, pc) -> float:
    """The share of test examples whose highest class (or choice) is the label, over the DP ranks."""
    right = total = 0
    mine = examples[pc.dp_rank::pc.dp]
    for i in range(0, len(mine), cfg.train.micro_batch_size):
        samples = [dataset.sample(e) for e in mine[i:i + cfg.train.micro_batch_size]]
        tokens = torch.stack([s["tokens"] for s in samples]).to(pc.device)
        labels = torch.stack([s["labels"] for s in samples]).to(pc.device)
        mask = torch.stack([s["loss_mask"] for s in samples]).to(pc.device)
        t = tokens.shape[-1]
        _, head = model(tokens)
        predicted = class_logits(head, labels[..., t], mask[..., t], cfg.finetune.task).argmax(-1)
        right += int((predicted == labels[:, 0, t + 1]).sum())
        total += len(samples)
    sums = torch.tensor([right, total], dtype=torch.float64, device=pc.device)
    if pc.dp > 1:
        dist.all_reduce(sums, group=pc.dp_group)
    return float(sums[0] / sums[1])


def finetune(cfg: Config) -> None:
    """One rank of `megagpt finetune`."""
    from megagpt.data.tokenizer import Tokenizer
    from megagpt.parallel.distributed import launched_as_rank_zero
    from megagpt.rlhf.data import checkpoint_tokenizer
    from megagpt.train.pretrain import Task, pretrain

    f = cfg.finetune
    tok = Tokenizer.load(checkpoint_tokenizer(f.init, f.tokenizer))
    train, dropped_train = prepare(cfg, f.train, tok)
    test, dropped_test = prepare(cfg, f.test, tok)
    if (dropped_train or dropped_test) and launched_as_rank_zero():  # the process group comes with pretrain()
        print(f"megagpt finetune: left out {dropped_train} train and {dropped_test} test records longer than "
              f"model.seq_length={cfg.model.seq_length}", flush=True)
    first_special = cfg.model.vocab_size
    if tok.vocab_size > first_special:
        raise DataError(f"the tokenizer has {tok.vocab_size} tokens but model.vocab_size={first_special}")
    run_cfg = with_added_tokens(cfg)
    c_max = max(len(e.sequences) for e in train + test)
    make = lambda examples, n, seed: FinetuneDataset(examples, cfg.model.seq_length, tok.eod, first_special, n, seed)  # noqa: E731

    def datasets(cfg: Config, train_samples: int, valid_samples: int):
        return make(train, train_samples, cfg.train.seed), make(test, valid_samples, cfg.train.seed + 1)

    def finish(engine, pc, cfg: Config) -> str:
        model = engine.module
        model.eval()
        dataset = make(test, 1, 0)
        dataset.c_max = c_max
        acc = accuracy(model, dataset, test, cfg, pc)
        model.train()
        report = {"task": f.task, "accuracy": acc, "test_examples": len(test), "train_examples": len(train),
                  "left_out": {"train": dropped_train, "test": dropped_test}, "lm_coef": f.lm_coef}
        if dist.get_rank() == 0:
            with open(os.path.join(cfg.run.dir, REPORT), "w") as out:
                json.dump(report, out, indent=1)
        return f"megagpt finetune: {f.task} accuracy {acc:.3f} on {len(test)} test examples (lm_coef {f.lm_coef})"

    from megatron.core import parallel_state as ps

    def loss(output, labels):  # the TP group exists once the loop has built the parallel context
        return finetune_loss(f.task, f.lm_coef, run_cfg.model.vocab_size, ps.get_tensor_model_parallel_group())(
            output, labels)

    pretrain(run_cfg, datasets=datasets, init_from=f.init, task=Task(
        name="finetune", model=classifier_model(f.task, f.num_labels), loss=loss, new_parameters=("head.",),
        grown_vocab=True, finish=finish, given=cfg))


def preflight_finetune(cfg: Config) -> None:
    """Before any process starts: both files read and checked, the tokens fit, the checkpoint fits the model."""
    from megagpt.data.tokenizer import keep_tokenizer
    from megagpt.rlhf.data import checkpoint_tokenizer
    from megagpt.data.tokenizer import Tokenizer
    from megagpt.train.checkpoint import check_shape, read_meta, resolve_init
    from megagpt.train.universal import require_language_model

    f = cfg.finetune
    for path in (f.train, f.test):
        read_examples(path, f.task, f.num_labels)
    path = resolve_init("finetune.init", f.init, cfg.run.dir)
    require_language_model(path, "finetune.init")
    tokenizer = checkpoint_tokenizer(f.init, f.tokenizer)
    tok = Tokenizer.load(tokenizer)
    for data in (f.train, f.test):  # a file whose every record is too long, before any process starts
        prepare(cfg, data, tok)
    keep_tokenizer(tokenizer, cfg.run.dir)
    check_shape(read_meta(path), with_added_tokens(cfg), path, grown_vocab=True)
