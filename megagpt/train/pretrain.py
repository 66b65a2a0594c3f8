"""The pretraining loop: one process of a DP x PP x TP world."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import closing
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import yaml

from megagpt.config import Config, validate
from megagpt.data.datasets import build_datasets, micro_batches, note_epochs, note_small_held_out
from megagpt.dir_lock import hold_on_rank_zero
from megagpt.errors import DataError, StorageError
from megagpt.files import writing
from megagpt.model.gpt import GPT, lm_loss
from megagpt.parallel.collectives import any_ranks, mean_over
from megagpt.parallel.distributed import init_distributed
from megagpt.parallel.parallelize import parallelize
from megagpt.parallel.topology import ParallelContext, build_parallel_context
from megagpt.planner import training_flops_per_token
from megagpt.train.checkpoint import Checkpointer, TrainState, starts_afresh
from megagpt.train.guard import check_finite
from megagpt.train.metrics import (RunLog, first_evaluation, first_unwritten, stop_if_unwritten, unwritten_error,
                                   written_by_rank_zero)
from megagpt.train.profiling import StepProfiler
from megagpt.train.schedules import batch_sizes, lr_schedule, note_schedule


def _to(device, batch):
    # On a GPU, a copy from pageable memory blocks the host until the GPU has drained its queue, once per
    # micro-batch (the GPU then idles while the next forward is launched); from pinned memory it queues like a kernel.
    def move(x):
        return x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x.to(device)

    tokens, (labels, mask) = batch
    return move(tokens), (move(labels), move(mask))


def _dp_mean(value: torch.Tensor, pc: ParallelContext) -> float:
    return mean_over(value, pc.dp_group, pc.dp)


@dataclass
class Task:
    """What a run optimises. Pretraining and SFT: the GPT and its LM loss; the reward model
    (megagpt.rlhf.reward) brings a scalar head, its ranking loss and a last step of its own."""

    name: str = "pretrain"
    model: type = GPT
    loss: Callable = lm_loss  # (model output, labels) -> scalar
    new_parameters: tuple = ()  # name prefixes an init checkpoint lacks (a new head), initialised fresh
    grown_vocab: bool = False  # the vocabulary has tokens the init checkpoint lacks (GPT-1's added tokens)
    # the sequences of seq_length the model reads per sample: a reward model's comparison is K responses (tokens/s
    # counts them all; consumed_tokens, which the schedules read, counts samples × seq_length)
    sequences_per_sample: int = 1
    # (engine, pc, cfg) -> a line for rank 0 to print: after the last step, before the last checkpoint
    finish: Optional[Callable] = None
    # the config as the user gave it, for run.dir/config.yaml where the run's differs (finetune's added tokens):
    # that file is for reusing as --config, which adds them again
    given: Optional[Config] = None


class Trainer:
    def __init__(self, cfg: Config, pc: ParallelContext, engine, loss: Callable = lm_loss):
        self.cfg, self.pc, self.engine, self.loss = cfg, pc, engine, loss
        self.pipelined = pc.pp > 1

    def train_step(self, batches) -> float:
        if self.pipelined:
            return self.engine.train_batch(data_iter=(_to(self.pc.device, b) for b in batches)).item()
        engine, gas = self.engine, self.engine.gradient_accumulation_steps()
        losses = []
        for i, batch in enumerate(batches):
            tokens, labels = _to(self.pc.device, batch)
            engine.set_gradient_accumulation_boundary(i == gas - 1)
            loss = self.loss(engine(tokens), labels)
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach())
        return _dp_mean(torch.stack(losses).mean(), self.pc)

    def evaluate(self, batches: list) -> float:
        if self.pipelined:
            return self.engine.eval_batch(iter([_to(self.pc.device, b) for b in batches]),
                                          num_micro_batches=len(batches)).item()
        self.engine.eval()
        with torch.no_grad():
            losses = [self.loss(self.engine(t), l) for t, l in (_to(self.pc.device, b) for b in batches)]
        self.engine.train()
        return _dp_mean(torch.stack(losses).mean(), self.pc)

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr


PREEMPTED = "PREEMPTED"  # in run.dir: the last run stopped early (signal, exit duration), saved; a requeue continues it


INTERRUPTED = 128 + signal.SIGINT  # the exit code of a run stopped by Ctrl-C (after its save), as a shell reports it


class Preemption:
    """SIGTERM / SIGUSR1 (Slurm's --signal), SIGINT (Ctrl-C), or train.exit_duration_minutes since the rank started,
    mark the run; ranks agree on it after each step but the last (a run that is done has nothing to continue)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    in_process: int | None = None  # the last signal any instance took: a forked rank reads it as it ends

    def __init__(self, device: torch.device, exit_duration_minutes: float | None = None):
        self.device = device
        self.received: int | None = None
        self.why: str | None = None  # this rank's reason to stop, as agreed() found it
        self.minutes = exit_duration_minutes
        self.deadline = None  # as time.time(): counted from this process's start, as a job's time limit is
        if exit_duration_minutes is not None:
            import psutil

            self.deadline = psutil.Process().create_time() + 60 * exit_duration_minutes
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT and "TORCHELASTIC_RUN_ID" not in os.environ:
            raise KeyboardInterrupt  # Ctrl-C again in a lone process: stop now (torch elastic kills its ranks itself)
        self.received = Preemption.in_process = signum

    @staticmethod
    def release() -> int:
        """After training in this process: the signals' usual handlers back (a later stage's Ctrl-C is not lost),
        and the exit code for how the run ended (130 after a stop by Ctrl-C, as a shell reports it)."""
        for sig in Preemption.SIGNALS:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        return INTERRUPTED if Preemption.in_process == signal.SIGINT else 0

    def agreed(self, *unwritten: Optional[StorageError], preemptible: bool = True) -> bool:
        """Collective, after a step: True on every rank once any rank has a signal or is past its deadline (and the
        run is `preemptible`: not at its last step), so all stop after the same step. A record rank 0 could not
        write (`unwritten`: RunLog.problem, Checkpointer.problem) is agreed on in the same all-reduce, and raised
        by every rank, rank 0's line naming the file."""
        self.why = None if not preemptible else (
            f"signal {signal.Signals(self.received).name} received" if self.received is not None else
            f"train.exit_duration_minutes={self.minutes} reached"
            if self.deadline is not None and time.time() >= self.deadline else None)
        problem = first_unwritten(*unwritten)
        failed, stop = any_ranks([problem is not None, self.why is not None], self.device)
        if failed:
            raise unwritten_error(problem)
        return stop

    def stop(self, log: RunLog, run_dir: str, is_logger: bool, saved: str, *unwritten: Optional[StorageError]) -> None:
        """After the save: mark run_dir PREEMPTED (the requeued job continues it), say so, wait for every rank. A
        record of the save (`unwritten`) or the marker that rank 0 could not write stops every rank in one line."""
        log.close()
        marker = os.path.join(run_dir, PREEMPTED)
        problem = first_unwritten(log.problem, *unwritten)
        if is_logger and problem is None:
            try:
                with writing(marker):
                    open(marker, "w").close()
            except StorageError as exc:
                problem = StorageError(f"saved {saved}, but {exc} (a requeued job would not know to continue it)")
            else:
                # the reason found when the ranks agreed: a signal or deadline that comes during the save is not it
                print(f"megagpt: {self.why or 'another rank was signalled'}; saved {saved} and stopped", flush=True)
        stop_if_unwritten(self.device, problem)  # and every rank waits for the marker


def keep_records_through(run_dir: str, step: int) -> None:
    """Drop metrics a killed run logged after its last checkpoint; the resumed run logs those steps again. A run
    that starts at step 0 (a killed run that never saved, or a rerun of one that saved nothing) logs everything
    again, its held-out loss before the first step included, so it keeps none (that one was kept, and logged twice)."""
    for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
        path = os.path.join(run_dir, name)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            kept = [line for line in f if step and line.strip() and json.loads(line)["step"] <= step]
        with writing(path), open(path, "w") as f:
            f.writelines(kept)


def open_run_dir(cfg: Config, step: int) -> None:
    """On rank 0 as a run starts or resumes at `step`: its config, its records through `step`, no stale marker.
    Raises StorageError naming the file it could not write (the caller has the ranks agree on it)."""
    config = os.path.join(cfg.run.dir, "config.yaml")
    with writing(config):
        os.makedirs(cfg.run.dir, exist_ok=True)
        with open(config, "w") as f:
            yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    keep_records_through(cfg.run.dir, step)
    marker = os.path.join(cfg.run.dir, PREEMPTED)
    if os.path.exists(marker):
        with writing(marker):
            os.remove(marker)


def preflight_pretrain(cfg: Config) -> None:
    """Before any process starts: the data (megagpt.data.checks); their tokenizer goes into run.dir, where
    generate, eval and the next stage find it whatever becomes of the data."""
    from megagpt.data.checks import check_training_data, find_tokenizer
    from megagpt.data.tokenizer import keep_tokenizer

    check_training_data(cfg)
    found = find_tokenizer(cfg)
    if found is not None:
        if not starts_afresh(cfg):
            _same_tokenizer_as_checkpoints(found, cfg.run.dir)
        keep_tokenizer(found, cfg.run.dir)


def _same_tokenizer_as_checkpoints(found: str, run_dir: str) -> None:
    """The data's tokenizer is the one run.dir's checkpoints read (kept beside them), where the run continues
    from them: a run imported from Hugging Face, or resumed, trained on another tokenizer's ids (whose text
    differs) without a word, and its tokenizer.json was replaced by the data's. (A fresh start sets the
    checkpoints aside, where generate reads their training data's tokenizer, not run.dir's.)"""
    from megagpt.data.tokenizer import Tokenizer
    from megagpt.train.checkpoint import checkpoint_root, complete_tags

    kept = os.path.join(run_dir, "tokenizer.json")
    if not os.path.isfile(kept) or not complete_tags(checkpoint_root(run_dir)):
        return
    if Tokenizer.load(kept).fingerprint != Tokenizer.load(found).fingerprint:
        raise DataError(f"run.dir={run_dir!r} holds checkpoints of a model that reads {kept}, but the training data "
                        f"were made with another tokenizer ({found}): its ids stand for other text; tokenize the "
                        f"data with {kept}, or use another run.dir")


def pretrain(cfg: Config, datasets=build_datasets, init_from: str | None = None, task: Task = Task()) -> None:
    """Train one rank of the run. datasets(cfg, train_samples, valid_samples) -> (train, valid), each
    indexable by sample into {"tokens", "labels", "loss_mask"}; init_from: a checkpoint whose weights
    a fresh run starts from (SFT starts from a pretrained model; a resumed run ignores it)."""
    device = init_distributed(cfg.run.device, timeout_minutes=cfg.run.dist_timeout_minutes)
    validate(cfg, dist.get_world_size(), check_data=False)  # the data and the device were checked before the ranks
    lock = hold_on_rank_zero(cfg.run.dir, "run.dir", "training run", device)
    try:
        _train(cfg, device, datasets, init_from, task)
    finally:
        if lock is not None:
            lock.close()


def _train(cfg: Config, device: torch.device, datasets, init_from: str | None, task: Task) -> None:
    world = dist.get_world_size()
    pc = build_parallel_context(cfg.parallel.tp, cfg.parallel.pp, device)
    t, seq = cfg.train, cfg.model.seq_length
    sizes = batch_sizes(cfg)
    lr_at = lr_schedule(cfg, sum(sizes) * seq)
    eval_samples = t.eval_samples if t.eval_interval else 0
    train_ds, valid_ds = datasets(cfg, sum(sizes), max(eval_samples, 1))
    engine, rng = parallelize(cfg, pc, sizes[0], task.model)
    trainer = Trainer(cfg, pc, engine, task.loss)
    preemption = Preemption(device, t.exit_duration_minutes)
    checkpointer = Checkpointer(cfg, pc, engine, rng)
    state = checkpointer.resume()
    if state.step == 0 and init_from is not None:
        checkpointer.load_weights(init_from, task.new_parameters, task.grown_vocab)
    is_logger = dist.get_rank() == 0

    def open_records():
        open_run_dir(task.given or cfg, state.step)
        if state.step < t.steps:  # a rerun that trains nothing changes neither its sample order nor its schedule
            note_epochs(cfg.run.dir, train_ds, state.step)
            note_small_held_out(valid_ds, eval_samples, seq)
            note_schedule(cfg.run.dir, lr_at, state.step, state.consumed_tokens + sizes[state.step] * seq)

    written_by_rank_zero(is_logger, device, open_records)
    if is_logger:
        if state.step:
            print(f"megagpt: resumed from step {state.step} ({state.consumed_samples} samples, "
                  f"{state.consumed_tokens} tokens consumed)", flush=True)
    log = RunLog(cfg.run.dir, is_logger, t.steps, cfg.run.tensorboard, t.progress, first_step=state.step,
                 desc=task.name, log_interval=t.log_interval)

    profiler = StepProfiler(t.profile_steps, t.profile_ranks, dist.get_rank(), device, cfg.run.dir)
    # the model's FLOPs per trained token (MFU's numerator, as Megatron-LM's TFLOP/s per GPU), where the model is
    # a language model (a reward model's head is not the vocabulary's)
    flops_per_token = training_flops_per_token(cfg.model) if task.loss is lm_loss else None
    evals = []

    def held_out(step: int) -> None:
        batches = list(micro_batches(valid_ds, 0, eval_samples, t.micro_batch_size, pc.dp_rank, pc.dp))
        loss = trainer.evaluate(batches)
        evals.append({"step": step, "loss": loss})
        if task.loss is lm_loss:  # a perplexity only where the loss is a language model's
            evals[-1]["ppl"] = math.exp(min(loss, 50.0))
        log.evaluation(evals[-1])

    consumed_samples, consumed_tokens = state.consumed_samples, state.consumed_tokens
    loss, finished = float("nan"), None
    if eval_samples and state.step == 0:
        held_out(0)
    with closing(profiler):  # a loop that stops inside train.profile_steps still writes what it profiled
        for step, gbs in enumerate(sizes[state.step:], start=state.step + 1):
            if gbs != engine.train_batch_size():
                engine.set_train_batch_size(gbs)
            lr = lr_at(consumed_tokens + gbs * seq)  # the schedule's value once this batch is consumed
            trainer.set_lr(lr)
            profiler.before(step)
            skipped_before = engine.skipped_steps
            start = time.perf_counter()
            loss = trainer.train_step(micro_batches(train_ds, consumed_samples, gbs, t.micro_batch_size,
                                                    pc.dp_rank, pc.dp))
            elapsed = time.perf_counter() - start
            profiler.after(step)
            consumed_samples += gbs
            consumed_tokens += gbs * seq
            grad_norm = engine.get_global_grad_norm()
            record = {"step": step, "loss": loss, "lr": lr,
                      "grad_norm": None if grad_norm is None else float(grad_norm), "global_batch_size": gbs,
                      "consumed_samples": consumed_samples, "consumed_tokens": consumed_tokens,
                      "tokens_per_s": gbs * seq * task.sequences_per_sample / elapsed, "step_time_s": elapsed}
            if flops_per_token:
                record["model_tflops_per_gpu"] = flops_per_token * record["tokens_per_s"] / world / 1e12
            if t.precision == "fp16":  # as Megatron-LM logs them: the dynamic loss scale, and overflow-skipped steps
                record["loss_scale"] = float(engine.optimizer.loss_scale)
                record["skipped"] = engine.skipped_steps > skipped_before
            if profiler.marks(step):
                record["profiled"] = True
            if device.type == "cuda":
                record["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            log.step(record)
            # fp16 reports an infinite norm for the steps it skips to lower the loss scale
            check_finite(f"step {step}", {"loss": loss, "gradient norm": None if t.precision == "fp16" else
                                          record["grad_norm"]}, checkpointer.root)
            if eval_samples and (step % t.eval_interval == 0 or step == t.steps):
                held_out(step)
            # before a save: rank 0's records so far, and whether to stop early, in one collective
            stopping = preemption.agreed(log.problem, checkpointer.problem, preemptible=step < t.steps)
            if step == t.steps and task.finish is not None:
                finished = task.finish(engine, pc, cfg)
            if stopping:
                profiler.close()  # the steps it profiled, not the save
                checkpointer.save(TrainState(step, consumed_samples, consumed_tokens))
                preemption.stop(log, cfg.run.dir, is_logger, f"step {step} to {checkpointer.root}",
                                checkpointer.problem)
                return
            if t.save_interval and (step % t.save_interval == 0 or step == t.steps):
                checkpointer.save(TrainState(step, consumed_samples, consumed_tokens))
    stop_if_unwritten(device, log.problem, checkpointer.problem)  # the last save's record, or a rerun's load
    log.close()
    if is_logger and state.step >= t.steps:  # a rerun of a finished run: nothing trained, nothing to report
        print(f"megagpt: {cfg.run.dir} has trained {state.step} steps already, train.steps={t.steps} (raise "
              f"train.steps to continue it)", flush=True)
    elif is_logger:
        first = first_evaluation(cfg.run.dir) if state.step else None  # a resumed run's: its process ran later ones
        held = f"; held-out loss {(first or evals[0])['loss']:.3f} -> {evals[-1]['loss']:.3f}" if evals else ""
        print(f"megagpt: trained {t.steps} steps at (tp,pp,dp)=({pc.tp},{pc.pp},{pc.dp}), {consumed_tokens} tokens; "
              f"last loss {loss:.3f}{held}; metrics in {cfg.run.dir}/metrics.jsonl")
        if finished:
            print(finished, flush=True)
    dist.barrier()
