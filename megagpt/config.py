"""Typed run configuration: YAML files plus dotted command-line overrides.

A config file may name other files under `base:` (paths relative to itself, or `configs/...` for the presets
megagpt ships); they are merged first, in order, so presets in configs/model/ compose with run files. Every key
is checked against the dataclasses below, and `validate()` rejects impossible runs with
one line naming the keys and values at fault, before any process group exists.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import re
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from megagpt.errors import ConfigError
from megagpt.files import same_shard_twice


@dataclass
class ModelConfig:
    num_layers: int = 12
    hidden_size: int = 768
    num_heads: int = 12
    ffn_hidden_size: Optional[int] = None  # default 4 * hidden_size
    seq_length: int = 1024
    vocab_size: int = 50257
    # Vocab is padded to a multiple of this, independent of tp, so every layout holds the same matrix.
    make_vocab_size_divisible_by: int = 128
    norm_position: str = "pre"  # "pre": GPT-2/3 (plus a final norm); "post": GPT-1
    layernorm_epsilon: float = 1e-5
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_std: float = 0.02
    # GPT-2's code starts position embeddings at 0.01; GPT-1's draws them with the tokens', at 0.02.
    position_init_std: float = 0.01
    # GPT-2: residual output projections start at init_std / sqrt(2 * num_layers).
    scale_residual_init: bool = True
    attention: str = "dense"  # "dense" | "alternating" (GPT-3: dense and locally banded layers alternate)
    local_window: int = 256  # tokens a banded layer sees (distances 0..local_window-1)
    # GPT-3 cites the Sparse Transformer without naming its pattern: "local" (the band) or "strided" (+ k, 2k, ...).
    sparse_pattern: str = "local"

    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden_size or 4 * self.hidden_size

    @property
    def padded_vocab_size(self) -> int:
        d = self.make_vocab_size_divisible_by
        return math.ceil(self.vocab_size / d) * d

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def is_local_layer(self, layer_index: int) -> bool:
        return self.attention == "alternating" and layer_index % 2 == 1


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    zero_stage: int = 1
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer states and step in CPU memory (ZeRO 1-3)
    offload_params: bool = False  # ZeRO-Infinity's parameter offload to CPU memory (ZeRO 3)
    # tp > 1: LayerNorm, dropout and the residual stream hold 1/tp of the sequence per rank (Korthikanti et al.)
    sequence_parallel: bool = False
    # bf16: gradients reduced over DP in fp32, as Megatron-LM does by default (twice the traffic); false keeps
    # DeepSpeed's default, the training precision, which rounds the fp32 micro-batch sums to bf16 on the wire
    grad_reduce_in_fp32: bool = False


@dataclass
class OptimConfig:
    lr: float = 6e-4
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of lr (GPT-3: 10%)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    warmup_tokens: int = 375_000_000
    decay_tokens: Optional[int] = None  # default: the tokens of the whole run


@dataclass
class DataConfig:
    prefixes: list[str] = field(default_factory=list)  # Megatron .bin/.idx path prefixes
    weights: Optional[list[float]] = None  # per prefix; default: proportional to size
    mixture: Optional[str] = None  # mixture.json written by the corpus pipeline
    split: str = "98,2,0"  # train, validation (held-out loss), test
    cache_dir: Optional[str] = None  # default: <run.dir>/data_cache


@dataclass
class TrainConfig:
    steps: int = 100
    global_batch_size: int = 256
    micro_batch_size: int = 4
    seed: int = 1234
    precision: str = "fp32"  # fp32 | bf16 | fp16 (loss-scaled; GPU only)
    # GPT-3 batch ramp: from batch_ramp_start sequences, add batch_ramp_increment at a time,
    # linearly in consumed tokens, reaching global_batch_size after batch_ramp_tokens (start null: no ramp,
    # the other two then unread, so a preset ramps off with one override).
    batch_ramp_start: Optional[int] = None
    batch_ramp_increment: Optional[int] = None
    batch_ramp_tokens: int = 0
    log_interval: int = 10  # with train.progress=false (a batch job's log): a line every this many steps
    eval_interval: int = 0  # 0: no periodic held-out evaluation
    eval_samples: int = 64
    progress: bool = True
    save_interval: int = 0  # save a checkpoint every this many steps (and at the end); 0: never
    keep_last: int = 2  # complete checkpoints kept in <run.dir>/checkpoints; 0: all
    resume: bool = True  # continue from <run.dir>/checkpoints/latest when there is one
    # Stop after the step that ends this many minutes after the rank started, saved, as on a signal (Megatron-LM's
    # --exit-duration-in-mins): below a job's time limit, a Slurm job requeues and continues. None: no limit.
    exit_duration_minutes: Optional[float] = None
    # Also save layout-free shards (full-DP fp32 weights + Adam moments per TP shard): what loading at
    # another (tp, pp, dp) and export-hf read. About doubles a checkpoint's size; off: same-layout resume only.
    universal_checkpoint: bool = True
    # torch.compile each transformer block on its own (as torchtitan does): same losses, fused kernels.
    compile: bool = False
    # Recompute activations in the backward pass to save memory: none | selective (the attention core,
    # as Megatron does) | full (each transformer block keeps only its input). Losses are unchanged.
    activation_checkpointing: str = "none"
    # torch.profiler over steps [first, last] on these ranks: a trace and a kernel table in <run.dir>/profile
    profile_steps: Optional[list[int]] = None
    profile_ranks: list[int] = field(default_factory=lambda: [0])


DEVICES = ("auto", "cpu", "cuda")
FINETUNE_TASKS = ("classification", "entailment", "similarity", "multiple_choice")
ACTIVATION_CHECKPOINTING = ("none", "selective", "full")


@dataclass
class RunConfig:
    dir: str = "runs/default"
    tensorboard: bool = True
    # auto: CUDA + NCCL when every rank on a node has a GPU of its own, else CPU + gloo; cpu | cuda force one.
    device: str = "auto"
    # How long a collective waits for its slowest rank before the job is aborted (NCCL's watchdog): long enough for
    # a rank writing a checkpoint, or a PPO role idle through another role's generation or training.
    # Without it, NCCL groups got 10 minutes (torch's, DeepSpeed's) and gloo's 30.
    dist_timeout_minutes: float = 30.0


@dataclass
class SFTConfig:
    """Supervised fine-tuning on demonstrations (InstructGPT's first step), read by `megagpt sft`."""

    data: Optional[str] = None  # JSONL of {"prompt", "response"}
    init: Optional[str] = None  # the checkpoint (or run dir) whose weights SFT starts from
    tokenizer: Optional[str] = None  # default: the init checkpoint's training tokenizer
    valid_fraction: float = 0.05  # demonstrations held out for the eval loss


@dataclass
class RMConfig:
    """The reward model (InstructGPT's second step), read by `megagpt rm`."""

    data: Optional[str] = None  # JSONL of {"prompt", "responses": [best, ..., worst]}, K = 2..9
    init: Optional[str] = None  # the SFT checkpoint (or run dir) the model starts from
    # JSONL of {"prompt", "response"} (the SFT data): the reward is shifted so these score 0 on average
    demonstrations: Optional[str] = None
    tokenizer: Optional[str] = None  # default: the init checkpoint's
    valid_fraction: float = 0.1  # comparisons held out for the loss and the pairwise accuracy


@dataclass
class FinetuneConfig:
    """GPT-1's supervised fine-tuning on a labelled task (Radford et al. 2018, §3.2-3.3), read by `megagpt finetune`."""

    task: Optional[str] = None  # classification | entailment | similarity | multiple_choice
    train: Optional[str] = None  # JSONL (megagpt.eval.finetune lists each task's fields)
    test: Optional[str] = None  # JSONL: the accuracy reported after the last step
    init: Optional[str] = None  # the pretrained checkpoint (or run dir)
    tokenizer: Optional[str] = None  # default: the init checkpoint's
    num_labels: int = 2  # classes (not multiple_choice: one score per choice)
    lm_coef: float = 0.5  # lambda of L3 = L2 + lambda * L1, the auxiliary language-modelling loss


@dataclass
class RLHFConfig:
    """PPO-ptx (InstructGPT's third step), read by `megagpt ppo`. train.steps counts PPO iterations,
    optim is the actor's (and the critic's, but for critic_lr), data is the pretraining mix of the ptx term."""

    prompts: Optional[str] = None  # JSONL of {"prompt"}
    actor_init: Optional[str] = None  # the SFT checkpoint: where the policy starts, and the frozen reference
    reward_init: Optional[str] = None  # the reward model: the frozen reward, and where the critic starts
    tokenizer: Optional[str] = None  # default: actor_init's (the reward model's must be the same)
    # Ranks and TP size per role, e.g. {actor: {ranks: 2, tp: 2}, critic: {ranks: 2, tp: 1}, ...}: the roles
    # then run side by side on disjoint rank groups. None: every role on all ranks at parallel.tp (colocated).
    layout: Optional[dict] = None
    rollout_batch_size: int = 16  # prompts per iteration
    mini_batches: int = 1  # optimizer steps per PPO epoch, each over rollout_batch_size / mini_batches samples
    micro_batch_size: int = 4
    ppo_epochs: int = 2
    max_new_tokens: int = 16
    temperature: float = 1.0  # the policy is the model's softmax at this temperature: sampled and scored so
    top_k: int = 0  # 0 only: a top-k or top-p cut would sample another policy than the one PPO's ratio measures
    top_p: float = 1.0  # 1 only (both kept so that configs and checkpoints that name them read)
    # r(x, y) minus this for a response cut at max_new_tokens (no end token; the reward model never saw one):
    # Ziegler et al. 2019 give such samples a fixed low reward. None: scored as they are
    missing_eos_penalty: Optional[float] = None
    kl_coef: float = 0.02  # beta: per-token KL penalty to the SFT policy
    kl_target: Optional[float] = None  # adaptive beta (Ziegler et al. 2019) towards this KL; None: fixed
    kl_horizon: int = 10000  # samples over which the adaptive controller closes the gap
    ptx_coef: float = 27.8  # gamma: weight of the pretraining log-likelihood in the actor's loss
    clip_ratio: float = 0.2  # PPO's policy ratio clip
    value_clip: float = 0.2  # the critic's value clip around the rollout's values
    gamma: float = 1.0  # GAE discount
    lam: float = 0.95  # GAE lambda
    critic_lr: Optional[float] = None  # default: optim.lr
    whiten_advantages: bool = True  # normalise advantages over the rollout batch
    log_samples: int = 2  # rollouts per iteration written to <run.dir>/samples.jsonl (prompt, response, reward)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    rlhf: RLHFConfig = field(default_factory=RLHFConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- loading


def shipped_config(path: str) -> str:
    """`path`; or, where it names `configs/...` and the current directory has no such file, the copy an install
    ships in the package (megagpt.configs), so the commands the docs give work from any directory."""
    parts = os.path.normpath(path).split(os.sep)
    if os.path.exists(path) or os.path.isabs(path) or parts[0] != "configs" or len(parts) < 2:
        return path
    from importlib import resources

    shipped = resources.files("megagpt.configs").joinpath(*parts[1:])
    return str(shipped) if shipped.is_file() else path


# The files of examples a stage reads: `configs/...` there names the shipped copy too, as for --config (the
# examples in configs/eval name their .jsonl files so).
DATA_FILES = ("sft.data", "rm.data", "rm.demonstrations", "rlhf.prompts", "finetune.train", "finetune.test")


def load_config(path: Optional[str] = None, overrides: typing.Sequence[str] = (), root: type = None):
    """Read `path` (with its bases), apply `section.key=value` overrides, build `root` (default Config)."""
    raw = _read_yaml_with_bases(shipped_config(path), seen=()) if path else {}
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    cfg = from_dict(raw, root or Config)
    if isinstance(cfg, Config):
        for key in DATA_FILES:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            if isinstance(value, str):
                setattr(getattr(cfg, section), name, shipped_config(value))
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"malformed override {item!r}: expected section.key=value")
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader) if text else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed override {item!r}: {str(exc).splitlines()[0]}") from None
    return key, value


class _Loader(yaml.SafeLoader):
    """safe_load without YAML 1.1's base-60 numbers: a Slurm time 12:00:00 stays that text (PyYAML read 43200)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, re.compile(r"(?!.*:)" + regexp.pattern, regexp.flags) if tag.endswith((":int", ":float")) else regexp)
            for tag, regexp in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


class _Int(int):
    """A YAML int that keeps its text: a text setting given a number takes it as written (a Slurm time in minutes,
    a memory in MB: `0100` is not "64")."""

    text: str


def _construct_int(loader: _Loader, node) -> _Int:
    digits = node.value.replace("_", "")
    # YAML 1.1 reads 010 as octal 8 (train.steps=010 trained 8 steps); 1.2, and every reader of decimals, as 10
    decimal = re.fullmatch(r"[-+]?0[0-9]+", digits)
    value = _Int(int(digits, 10) if decimal else loader.construct_yaml_int(node))
    value.text = node.value
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _UniqueKeyLoader(_Loader):
    """_Loader, but a key given twice in one mapping is an error (PyYAML keeps the last one silently); a merge key's
    (`<<:`) mapping is a default, which a key of the mapping itself overrides, as YAML says."""

    def flatten_mapping(self, node):
        # a mapping's own keys, checked once, before merging writes the merged keys into it (a mapping merged into
        # another is flattened again there: its overrides of what it merged are then no second key)
        checked = self.__dict__.setdefault("_checked", set())
        if id(node) not in checked:
            checked.add(id(node))
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if not isinstance(key, collections.abc.Hashable):
                    raise yaml.constructor.ConstructorError(
                        None, None, f"a key must be a name, not a {type(key).__name__}", key_node.start_mark)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice",
                                                            key_node.start_mark)
                seen.add(key)
        super().flatten_mapping(node)


def load_yaml(stream):
    """A YAML document as configs read it (_UniqueKeyLoader), its numbers plain ints and floats."""
    return _plain(yaml.load(stream, Loader=_UniqueKeyLoader))


def _plain(value):
    """value with each _Int made an int: a setting read as a whole (a dict, an untyped list) must dump as YAML."""
    if isinstance(value, _Int):
        return int(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _read_yaml_with_bases(path: str, seen: tuple) -> dict:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"config base cycle through {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.load(f, Loader=_UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(raw).__name__}")
    bases = raw.pop("base", None) or []
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"config file {path}: base={bases!r} must be a file or a list of files")
    merged: dict = {}
    for base in bases:
        full = os.path.join(os.path.dirname(path), base)
        if not os.path.exists(full) and os.path.isfile(preset := shipped_config(base)):
            full = preset  # `base: configs/model/gpt3-xl.yaml` in a user's own file: the shipped preset
        if os.path.isdir(full):
            raise ConfigError(f"config file {path}: base {base!r} is a directory, not a config file")
        if not os.path.isfile(full):
            raise ConfigError(f"config file {path}: base {base!r} not found ({os.path.abspath(full)})")
        _deep_merge(merged, _read_yaml_with_bases(full, seen + (path,)))
    _deep_merge(merged, raw)
    return merged


def _deep_merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    if not parents and isinstance(value, dict) and isinstance(node.get(leaf), dict):
        _deep_merge(node[leaf], value)  # `train={steps: 2}` sets those keys, as a base file would, not the section
    else:
        node[leaf] = value


def from_dict(raw: dict, root: type = None):
    root = root or Config
    sections = {f.name: f for f in dataclasses.fields(root)}
    built = {}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown config section {name!r} (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise ConfigError(f"config section {name} must be a mapping, got {values!r}")
        built[name] = _build_section(name, sections[name].default_factory, values)
    return root(**built)


def _build_section(section: str, cls: type, values: dict):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown config key {section}.{key}={value!r}")
        kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, str):  # YAML 1.1 reads "375e6" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "6e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, _Int):
            return value.text
    elif hint is list or typing.get_origin(hint) is list:
        if isinstance(value, list):
            return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)] if args else _plain(value)
    elif hint is dict:
        if isinstance(value, dict):
            return _plain(value)
    raise ConfigError(f"{key}={value!r} is not a valid {getattr(hint, '__name__', hint)}")


# ---------------------------------------------------------------- validation


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def steps_bf16_optimizer(precision: str, zero_stage: int, pp: int, offload_optimizer: bool) -> bool:
    """Whether DeepSpeed steps BF16_Optimizer (which partitions the master copy and moments over DP as ZeRO 1
    does): bf16 at ZeRO 1 with fp32 gradient accumulation (megagpt.train.optimizer), but offloaded, where ZeRO 1's
    own optimizer keeps an fp32 copy of each gradient instead; and bf16 at ZeRO 0 with pp > 1, where DeepSpeed's
    pipeline takes it. Its checkpoints are another optimizer's, and its bytes and traffic differ (the planner)."""
    if precision != "bf16":
        return False
    return zero_stage == 1 and not offload_optimizer or zero_stage == 0 and pp > 1


def data_parallel_size(cfg: Config, world_size: int) -> int:
    return world_size // (cfg.parallel.tp * cfg.parallel.pp)


MAX_STEPS = 100_000_000  # a per-step schedule is kept: 100M steps is years at any size
MAX_TIMEOUT_MINUTES = 1_000_000


def validate_model_sizes(m: ModelConfig) -> None:
    """The model's sizes, which the planner divides by (the padded vocab) before it validates any layout."""
    for key, value in [
        ("model.num_layers", m.num_layers), ("model.hidden_size", m.hidden_size),
        ("model.num_heads", m.num_heads), ("model.seq_length", m.seq_length),
        ("model.vocab_size", m.vocab_size), ("model.make_vocab_size_divisible_by", m.make_vocab_size_divisible_by),
        ("model.local_window", m.local_window),
    ]:
        _require(value >= 1, f"{key}={value} must be at least 1")
    _require(m.ffn_hidden_size is None or m.ffn_hidden_size >= 1,
             f"model.ffn_hidden_size={m.ffn_hidden_size} must be at least 1 (null: 4 x model.hidden_size)")


def validate(cfg: Config, world_size: int, check_data: bool = True) -> None:
    """Reject a run that cannot work at this world size. Raises ConfigError."""
    m, p, t, o = cfg.model, cfg.parallel, cfg.train, cfg.optim
    validate_model_sizes(m)
    for key, value in [
        ("parallel.tp", p.tp), ("parallel.pp", p.pp),
        ("train.steps", t.steps), ("train.global_batch_size", t.global_batch_size),
        ("train.micro_batch_size", t.micro_batch_size), ("train.log_interval", t.log_interval),
    ]:
        _require(value >= 1, f"{key}={value} must be at least 1")
    _require(t.steps <= MAX_STEPS, f"train.steps={t.steps} is more than {MAX_STEPS:,} steps (a token or sample count "
             f"given as steps?)")
    for key, value in [("train.eval_interval", t.eval_interval), ("train.batch_ramp_tokens", t.batch_ramp_tokens)]:
        _require(value >= 0, f"{key}={value} must be >= 0 (0: {'no held-out evaluation' if 'eval' in key else 'no ramp'})")
    _require(0 <= t.seed < 2**32, f"train.seed={t.seed} must lie in [0, 2**32) (numpy's and torch's seeds)")
    _require(m.norm_position in ("pre", "post"), f"model.norm_position={m.norm_position!r} must be 'pre' or 'post'")
    _require(m.attention in ("dense", "alternating"), f"model.attention={m.attention!r} must be 'dense' or 'alternating'")
    _require(m.sparse_pattern in ("local", "strided"), f"model.sparse_pattern={m.sparse_pattern!r} must be 'local' or 'strided'")
    _require(m.hidden_size % m.num_heads == 0,
             f"model.num_heads={m.num_heads} must divide model.hidden_size={m.hidden_size}")
    _require(m.num_heads % p.tp == 0, f"parallel.tp={p.tp} must divide model.num_heads={m.num_heads}")
    _require(m.ffn_size % p.tp == 0, f"parallel.tp={p.tp} must divide the MLP width {m.ffn_size}")
    _require(m.padded_vocab_size % p.tp == 0,
             f"parallel.tp={p.tp} must divide the padded vocab {m.padded_vocab_size} "
             f"(model.vocab_size={m.vocab_size} rounded up to model.make_vocab_size_divisible_by="
             f"{m.make_vocab_size_divisible_by})")
    _require(m.num_layers % p.pp == 0, f"parallel.pp={p.pp} must divide model.num_layers={m.num_layers}")
    # ZeRO 0 is plain data parallelism: DeepSpeed all-reduces the gradients and steps the whole optimizer on
    # every rank (megagpt.train.optimizer.own_clipping says how its norm and clip are made equal to ZeRO 1's).
    _require(p.zero_stage in (0, 1, 2, 3), f"parallel.zero_stage={p.zero_stage} must be 0, 1, 2 or 3")
    _require(p.pp == 1 or p.zero_stage in (0, 1), f"parallel.zero_stage={p.zero_stage} needs parallel.pp=1 "
             f"(DeepSpeed's pipeline takes ZeRO 0 or 1 only), got pp={p.pp}")
    _require(not (p.zero_stage == 0 and t.precision == "fp16"),
             "parallel.zero_stage=0 with train.precision=fp16 is not supported: DeepSpeed steps it through "
             "FP16_UnfusedOptimizer, whose loss scaling differs from ZeRO's (no hysteresis, and the step that raises "
             "the scale divides the gradients by the raised one); use ZeRO 1, or bf16")
    _require(not (p.zero_stage == 0 and p.pp > 1 and t.precision == "bf16") or t.universal_checkpoint,
             "parallel.zero_stage=0 with parallel.pp > 1 and train.precision=bf16 needs train.universal_checkpoint="
             "true (DeepSpeed's BF16_Optimizer partitions the optimizer over DP there, but its own checkpoint "
             "keeps dp rank 0's partition alone: the run resumes from universal/)")
    _require(not (p.grad_reduce_in_fp32 and t.precision == "fp16"),
             "parallel.grad_reduce_in_fp32=true applies to bf16 runs (fp32 runs reduce in fp32 already); fp16 "
             "gradients are loss-scaled and reduced in fp16, as DeepSpeed's and Megatron-LM's fp16 paths do")
    _require(not p.offload_optimizer or p.zero_stage >= 1,
             "parallel.offload_optimizer=true needs parallel.zero_stage 1, 2 or 3 (DeepSpeed offloads the "
             "optimizer of its ZeRO optimizers only, and without ZeRO silently keeps it in place), got 0")
    _require(not p.offload_params or p.zero_stage == 3,
             f"parallel.offload_params=true needs parallel.zero_stage=3 (DeepSpeed offloads only partitioned "
             f"parameters), got {p.zero_stage}")
    if p.sequence_parallel:
        _require(p.tp > 1, "parallel.sequence_parallel=true needs parallel.tp > 1 (it splits the sequence over TP ranks)")
        _require(m.seq_length % p.tp == 0,
                 f"parallel.sequence_parallel=true needs parallel.tp={p.tp} to divide model.seq_length={m.seq_length}")
        _require(cfg.rm.data is None and cfg.rlhf.prompts is None and cfg.finetune.task is None,
                 "parallel.sequence_parallel=true applies to pretraining and SFT; the reward model, PPO and GPT-1 "
                 "fine-tuning run without it")
    _require(world_size % (p.tp * p.pp) == 0,
             f"world size {world_size} must be a multiple of parallel.tp*parallel.pp={p.tp}*{p.pp}")
    if cfg.rlhf.prompts is not None:
        validate_rlhf(cfg)  # PPO's batches are per role (megagpt.rlhf.layout checks them against the world)
    else:
        validate_batches(cfg, world_size)
    _require(t.save_interval >= 0, f"train.save_interval={t.save_interval} must be >= 0 (0: no checkpoints)")
    _require(t.keep_last >= 0, f"train.keep_last={t.keep_last} must be >= 0 (0: keep all)")
    _require(t.precision in ("fp32", "bf16", "fp16"), f"train.precision={t.precision!r} must be fp32, bf16 or fp16")
    _require(t.activation_checkpointing in ACTIVATION_CHECKPOINTING,
             f"train.activation_checkpointing={t.activation_checkpointing!r} must be none, selective or full")
    _require(t.exit_duration_minutes is None or t.exit_duration_minutes > 0,
             f"train.exit_duration_minutes={t.exit_duration_minutes} must be a positive number of minutes (or null)")
    if t.profile_steps is not None:
        _require(len(t.profile_steps) == 2 and all(type(s) is int for s in t.profile_steps)
                 and 1 <= t.profile_steps[0] <= t.profile_steps[1] <= t.steps,
                 f"train.profile_steps={t.profile_steps} must be [first, last] with 1 <= first <= last <= "
                 f"train.steps={t.steps}")
        _require(all(type(r) is int and 0 <= r < world_size for r in t.profile_ranks),
                 f"train.profile_ranks={t.profile_ranks} must name ranks of this world (0..{world_size - 1})")
    _require(cfg.run.device in DEVICES, f"run.device={cfg.run.device!r} must be auto, cpu or cuda")
    _require(0 < cfg.run.dist_timeout_minutes <= MAX_TIMEOUT_MINUTES,  # 1e16 overflowed timedelta: a traceback
             f"run.dist_timeout_minutes={cfg.run.dist_timeout_minutes} must be a positive number of minutes, at most "
             f"{MAX_TIMEOUT_MINUTES:,} (almost two years)")
    _require(bool(cfg.run.dir.strip()), f"run.dir={cfg.run.dir!r} is empty: name the directory the run writes to")
    _require(0.0 <= o.min_lr_ratio <= 1.0, f"optim.min_lr_ratio={o.min_lr_ratio} must lie in [0, 1]")
    _require(o.lr > 0 and math.isfinite(o.lr), f"optim.lr={o.lr} must be positive and finite")
    _require(o.warmup_tokens >= 0, f"optim.warmup_tokens={o.warmup_tokens} must be >= 0")
    _require(not o.decay_tokens or o.decay_tokens > o.warmup_tokens,
             f"optim.decay_tokens={o.decay_tokens} must exceed optim.warmup_tokens={o.warmup_tokens} (the cosine "
             f"decay follows the warm-up; null or 0: decay over the whole run)")
    for key, value in (("optim.beta1", o.beta1), ("optim.beta2", o.beta2)):
        _require(0 <= value < 1, f"{key}={value} must lie in [0, 1)")
    for key, value in (("optim.eps", o.eps), ("model.init_std", m.init_std),
                       ("model.position_init_std", m.position_init_std), ("model.layernorm_epsilon",
                                                                          m.layernorm_epsilon)):
        _require(0 < value < math.inf, f"{key}={value} must be positive and finite")
    _require(0 <= o.weight_decay < math.inf, f"optim.weight_decay={o.weight_decay} must be >= 0 and finite")
    _require(0 <= m.hidden_dropout < 1 and 0 <= m.attention_dropout < 1, "model dropouts must lie in [0, 1)")
    parts = cfg.data.split.split(",")
    _require(len(parts) == 3 and all(re.fullmatch(r"\s*[0-9]+(\.[0-9]*)?\s*", x) for x in parts),  # ASCII, as
             # megatron-core reads them (str.isdigit also takes "²" and Arabic digits, which it cannot)
             f"data.split={cfg.data.split!r} must be three comma-separated numbers (train,valid,test)")
    train_share, valid_share, _ = (float(x) for x in parts)
    _require(train_share > 0, f"data.split={cfg.data.split!r} gives training no share")
    _require(valid_share > 0 or not t.eval_interval,
             f"data.split={cfg.data.split!r} gives the held-out split no share, but train.eval_interval="
             f"{t.eval_interval} asks for held-out loss (give it a share, or train.eval_interval=0)")
    _require(o.clip_grad >= 0, f"optim.clip_grad={o.clip_grad} must be >= 0 (0: no clipping)")
    _require(0 <= cfg.sft.valid_fraction < 1, f"sft.valid_fraction={cfg.sft.valid_fraction} must lie in [0, 1)")
    _require(0 < cfg.rm.valid_fraction < 1, f"rm.valid_fraction={cfg.rm.valid_fraction} must lie in (0, 1): "
             f"the pairwise accuracy is measured on held-out comparisons")
    if cfg.finetune.task is not None:
        f = cfg.finetune
        _require(f.task in FINETUNE_TASKS, f"finetune.task={f.task!r} must be one of {', '.join(FINETUNE_TASKS)}")
        _require(p.pp == 1 and p.zero_stage in (1, 2), f"parallel.pp={p.pp}, parallel.zero_stage={p.zero_stage}: "
                 f"fine-tuning runs at pp=1 and ZeRO 1 or 2 (tensor and data parallel)")
        _require(f.num_labels >= 2, f"finetune.num_labels={f.num_labels} must be at least 2")
        _require(f.lm_coef >= 0, f"finetune.lm_coef={f.lm_coef} must be >= 0")
    if cfg.rm.data is not None:
        _require(p.pp == 1, f"parallel.pp={p.pp}: the reward model trains at pp=1 (tensor and data parallel)")
        _require(p.zero_stage in (1, 2), f"parallel.zero_stage={p.zero_stage}: the reward model trains at ZeRO 1 "
                 f"or 2 (its reward shift sets a parameter in place)")
    _require_finite(cfg)
    if check_data:
        validate_data_paths(cfg)


def _require_finite(cfg) -> None:
    """No setting is infinite or NaN (the checks above name the usual ones with their ranges; this catches the rest,
    such as finetune.lm_coef=.inf, which trained to an 'inf loss: the run diverged')."""
    for section in dataclasses.fields(cfg):
        for name, value in dataclasses.asdict(getattr(cfg, section.name)).items():
            for item in value if isinstance(value, list) else [value]:
                _require(not isinstance(item, float) or math.isfinite(item),
                         f"{section.name}.{name}={value} must be finite")


def validate_batches(cfg: Config, world_size: int) -> None:
    """The global batch, its ramp and the held-out samples against micro-batch x dp."""
    t = cfg.train
    dp = data_parallel_size(cfg, world_size)
    per_step = t.micro_batch_size * dp
    _require(t.global_batch_size % per_step == 0,
             f"train.global_batch_size={t.global_batch_size} must be a multiple of "
             f"train.micro_batch_size*dp={t.micro_batch_size}*{dp}")
    if t.batch_ramp_start is not None:
        inc = t.batch_ramp_increment
        _require(inc is not None and inc >= 1, f"train.batch_ramp_increment={inc} must be set (>= 1) with a batch ramp")
        for key, value in [("train.batch_ramp_start", t.batch_ramp_start), ("train.batch_ramp_increment", inc)]:
            _require(value >= 1 and value % per_step == 0,
                     f"{key}={value} must be a positive multiple of train.micro_batch_size*dp={t.micro_batch_size}*{dp}")
        _require(t.batch_ramp_start <= t.global_batch_size and (t.global_batch_size - t.batch_ramp_start) % inc == 0,
                 f"train.global_batch_size={t.global_batch_size} must be train.batch_ramp_start={t.batch_ramp_start} "
                 f"plus a whole number of train.batch_ramp_increment={inc}")
    if t.eval_interval:
        _require(t.eval_samples >= per_step and t.eval_samples % per_step == 0,
                 f"train.eval_samples={t.eval_samples} must be a positive multiple of "
                 f"train.micro_batch_size*dp={t.micro_batch_size}*{dp}")


def validate_rlhf(cfg: Config) -> None:
    """PPO's settings that do not depend on the world (megagpt.rlhf.layout checks the rest)."""
    r = cfg.rlhf
    for key, value in [("rlhf.rollout_batch_size", r.rollout_batch_size), ("rlhf.mini_batches", r.mini_batches),
                       ("rlhf.micro_batch_size", r.micro_batch_size), ("rlhf.ppo_epochs", r.ppo_epochs),
                       ("rlhf.max_new_tokens", r.max_new_tokens), ("rlhf.kl_horizon", r.kl_horizon)]:
        _require(value >= 1, f"{key}={value} must be at least 1")
    _require(r.log_samples >= 0, f"rlhf.log_samples={r.log_samples} must be >= 0")
    _require(r.critic_lr is None or 0 < r.critic_lr < math.inf,
             f"rlhf.critic_lr={r.critic_lr} must be positive and finite (null: optim.lr)")
    o = cfg.optim
    _require(o.warmup_tokens == 0 and o.decay_tokens is None,
             f"optim.warmup_tokens={o.warmup_tokens}, optim.decay_tokens={o.decay_tokens}: PPO trains at a constant "
             f"learning rate (optim.lr for the actor, rlhf.critic_lr for the critic), so a warm-up or decay would be "
             f"ignored; set optim.warmup_tokens=0 and optim.decay_tokens=null (configs/rlhf/instructgpt.yaml does)")
    _require(r.max_new_tokens < cfg.model.seq_length,
             f"rlhf.max_new_tokens={r.max_new_tokens} leaves no room for a prompt in model.seq_length={cfg.model.seq_length}")
    for key, value in [("rlhf.kl_coef", r.kl_coef), ("rlhf.ptx_coef", r.ptx_coef)]:
        _require(value >= 0, f"{key}={value} must be >= 0")
    _require(0 < r.temperature < math.inf, f"rlhf.temperature={r.temperature} must be positive: PPO's samples are "
             f"draws from the policy whose log-probabilities it scores (0 would be greedy decoding)")
    _require(r.top_k == 0 and r.top_p == 1, f"rlhf.top_k={r.top_k}, rlhf.top_p={r.top_p}: PPO samples with no top-k "
             f"or top-p cut (0 and 1): a cut draws from another policy than the one its ratio and KL score")
    _require(r.missing_eos_penalty is None or 0 <= r.missing_eos_penalty < math.inf,
             f"rlhf.missing_eos_penalty={r.missing_eos_penalty} must be >= 0 (or null: none)")
    _require(r.kl_target is None or r.kl_target > 0, f"rlhf.kl_target={r.kl_target} must be positive (or null: fixed beta)")
    _require(r.clip_ratio > 0 and r.value_clip > 0, "rlhf.clip_ratio and rlhf.value_clip must be positive")
    _require(0 <= r.gamma <= 1 and 0 <= r.lam <= 1, f"rlhf.gamma={r.gamma} and rlhf.lam={r.lam} must lie in [0, 1]")
    _require(cfg.parallel.pp == 1, f"parallel.pp={cfg.parallel.pp}: PPO's roles are tensor and data parallel (pp=1)")
    _require(cfg.train.eval_interval == 0, f"train.eval_interval={cfg.train.eval_interval}: PPO has no held-out loss to "
             f"evaluate (its reward and KL are in metrics.jsonl each iteration); set train.eval_interval=0")
    _require(cfg.parallel.zero_stage in (1, 2), f"parallel.zero_stage={cfg.parallel.zero_stage}: PPO trains its "
             f"roles at ZeRO 1 or 2 (their checkpoints are layout-free, which ZeRO 3 does not load)")


# What each training command reads besides the config: unset, the command has nothing to train on. In the order
# validate_data_paths tells the stages apart by them.
STAGE_INPUTS = {"ppo": ("rlhf.prompts", "prompts"), "finetune": ("finetune.task", "a labelled task"),
                "sft": ("sft.data", "demonstrations"), "rm": ("rm.data", "comparisons")}


def setting(cfg: Config, key: str):
    """The value of `section.key`."""
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def stage_of(cfg: Config) -> str:
    """Which training stage a config is for: the first whose input is set, else pretraining."""
    return next((stage for stage, (key, _) in STAGE_INPUTS.items() if setting(cfg, key) is not None), "pretrain")


def check_stage_inputs(cfg: Config, stage: str) -> None:
    """`megagpt <stage>` (or `submit <stage>`) names its input: the key validate() tells the stages apart by."""
    if stage in STAGE_INPUTS:
        key, what = STAGE_INPUTS[stage]
        _require(setting(cfg, key) is not None, f"{key} is not set: megagpt {stage} trains on {what}")
    for other, (key, _) in STAGE_INPUTS.items():  # validate() and the checkpoint checks tell stages apart by these
        if other != stage and setting(cfg, key) is not None:
            raise ConfigError(f"{key} is set, which makes this a config for megagpt {other}, not megagpt {stage} "
                              f"(unset it: {key}=null)")


def validate_data_paths(cfg: Config) -> None:
    if cfg.rlhf.prompts is not None:  # PPO: prompts and two checkpoints, and shards for the ptx term
        _require(os.path.isfile(cfg.rlhf.prompts), f"rlhf.prompts={cfg.rlhf.prompts!r}: file not found")
        for key in ("actor_init", "reward_init"):
            _require(getattr(cfg.rlhf, key) is not None, f"rlhf.{key} is not set: PPO starts from the SFT "
                     f"(actor_init) and reward model (reward_init) checkpoints")
        if not cfg.rlhf.ptx_coef:
            return
    elif cfg.finetune.task is not None:  # GPT-1 fine-tuning reads labelled JSONL
        for key in ("train", "test"):
            value = getattr(cfg.finetune, key)
            _require(value is not None and os.path.isfile(value), f"finetune.{key}={value!r}: file not found")
        _require(cfg.finetune.init is not None, "finetune.init is not set: fine-tuning starts from a pretrained checkpoint")
        return
    elif cfg.sft.data is not None:  # fine-tuning reads demonstrations, not shards
        _require(os.path.isfile(cfg.sft.data), f"sft.data={cfg.sft.data!r}: file not found")
        _require(cfg.sft.init is not None, "sft.init is not set: SFT starts from a pretrained checkpoint")
        return
    if cfg.rm.data is not None:  # the reward model reads comparisons
        _require(os.path.isfile(cfg.rm.data), f"rm.data={cfg.rm.data!r}: file not found")
        _require(cfg.rm.init is not None, "rm.init is not set: the reward model starts from the SFT checkpoint")
        _require(cfg.rm.demonstrations is not None,
                 "rm.demonstrations is not set: the reward is shifted so the SFT demonstrations score 0")
        _require(os.path.isfile(cfg.rm.demonstrations), f"rm.demonstrations={cfg.rm.demonstrations!r}: file not found")
        return
    d = cfg.data
    _require(bool(d.prefixes) or d.mixture is not None, "data.prefixes=[] is empty and no data.mixture is given")
    if d.mixture is not None:
        _require(not d.prefixes and not d.weights, f"data.mixture={d.mixture!r} names its own shards and weights: "
                 f"give it or data.prefixes/data.weights, not both")
        _require(os.path.isfile(d.mixture), f"data.mixture={d.mixture!r}: file not found")
    twice = same_shard_twice(d.prefixes)
    if twice:
        raise ConfigError(f"data.prefixes[{twice[1]}]={d.prefixes[twice[1]]!r} names the shard of "
                          f"data.prefixes[{twice[0]}] again: give each shard once (data.weights sets its share)")
    for i, prefix in enumerate(d.prefixes):
        for ext in (".bin", ".idx"):
            _require(os.path.isfile(prefix + ext), f"data.prefixes[{i}]={prefix!r}: {prefix + ext} not found")
    if d.weights is not None:
        _require(len(d.weights) == len(d.prefixes),
                 f"data.weights has {len(d.weights)} entries but data.prefixes has {len(d.prefixes)}")
        _require(all(isinstance(w, (int, float)) and w > 0 for w in d.weights),
                 f"data.weights={d.weights!r} must all be positive numbers")
