"""`megagpt`: one command for every stage.

    megagpt pretrain --config PATH [--nproc N] [key=value ...]
    megagpt pretrain --config PATH --dry-run [--gpus N] [hardware flags] [key=value ...]
    megagpt plan --config PATH --gpus N --gpu-memory-gb M [--json] [--top K | --all] [hardware flags] [key=value ...]
                 hardware flags: --gpu-tflops --matmul-efficiency --intra-node-gbps --inter-node-gbps
                                 --gpus-per-node --reserve-gb
    megagpt sft --config PATH [--nproc N] [key=value ...]
    megagpt rm --config PATH [--nproc N] [key=value ...]
    megagpt ppo --config PATH [--nproc N] [key=value ...]
    megagpt finetune --config PATH [--nproc N] [key=value ...]
    megagpt tokenize --input FILE... --output-prefix PREFIX (--tokenizer JSON|DIR | --vocab V --merges M | --vocab-size N)
    megagpt demo [--nproc N] [--run-dir DIR] [key=value ...]
    megagpt corpus run --config PATH [--restart | --extend] [key=value ...]
    megagpt corpus report RUN_DIR
    megagpt corpus explain --run RUN_DIR --id DOCUMENT_ID
    megagpt corpus mix --config PATH [key=value ...]
    megagpt corpus train-quality --positive FILE... --negative FILE... --out MODEL
    megagpt export-hf --checkpoint DIR --out DIR [--tokenizer JSON]
    megagpt generate --checkpoint DIR --prompt TEXT [--max-new-tokens N --temperature T --top-k K --top-p P
                     --seed S] [--nproc TP]
    megagpt import-hf DIR --out RUN_DIR
    megagpt eval perplexity --checkpoint DIR --data PATH... [--stride S] [--nproc TP] [--output JSON]
    megagpt eval icl --checkpoint DIR --task FILE [--shots K] [--seed S] [--limit N] [--corpus PATH...] [--nproc TP]
                     [--output JSON]
    megagpt eval harness --model megagpt --model_args checkpoint=DIR --tasks T [lm_eval arguments ...]
    megagpt submit {pretrain,sft,rm,ppo,finetune} --config PATH --nodes N (--gpus-per-node G | --cpu-tasks-per-node T)
                            [--partition P] [--time T] [--dry-run] [key=value ...]

A bad config, a bad override or an impossible layout ends the command with one line
naming the key and value, before any process starts: every error megagpt raises on
purpose (megagpt.errors) is printed as `megagpt: error: ...` with exit status 2, and
anything else keeps its traceback, since it is a bug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from megagpt.config import Config, check_stage_inputs, load_config, validate
from megagpt.errors import ConfigError, DataError, MegagptError, alike_on_each_node, prints_here



# (command, help, --config help) of the commands that train through one config
TRAINING_COMMANDS = (
    ("pretrain", "pretrain a GPT (3D parallel)", "a training config (see configs/)"),
    ("sft", "supervised fine-tuning on demonstrations (InstructGPT step 1)",
     "a training config with an sft section (see configs/rlhf/)"),
    ("rm", "train a reward model on ranked comparisons (InstructGPT step 2)",
     "a training config with an rm section (see configs/rlhf/)"),
    ("ppo", "PPO-ptx against a reward model, roles on their own ranks (InstructGPT step 3)",
     "a config with an rlhf section (see configs/rlhf/)"),
    ("finetune", "GPT-1 fine-tuning on a labelled task (classification, entailment, similarity, multiple choice)",
     "a training config with a finetune section (see configs/eval/)"),
)


# Options that count something (processes, rows, epochs, tokens): each must be at least 1.
COUNTS = ("nproc", "top", "epochs", "max_new_tokens", "make_vocab_size_divisible_by", "limit", "batch_size")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megagpt", description="CommonCrawl to a pretrained, aligned GPT.")
    sub = parser.add_subparsers(dest="command", required=True)

    for command, text, config_help in TRAINING_COMMANDS:
        p = sub.add_parser(command, help=text)
        p.add_argument("--config", required=True, help=config_help)
        p.add_argument("--nproc", type=int, default=1, help="local processes to start (under torchrun or srun, which start the ranks, their ranks per node)")
        p.add_argument("overrides", nargs="*", metavar="key=value")
        if command == "pretrain":
            p.add_argument("--dry-run", action="store_true", help="build each pipeline stage on the meta device, "
                           "print parameters and bytes per rank and whether it fits; train nothing")
            p.add_argument("--gpus", type=int, help="with --dry-run: the world size to plan for (default --nproc)")
            p.add_argument("--gpu-memory-gb", type=float, default=80.0, help="with --dry-run: memory per GPU (GiB)")
            _hardware_arguments(p)

    pl = sub.add_parser("plan", help="memory and step time of every layout of a config on N GPUs, ranked")
    pl.add_argument("--config", required=True, help="a model preset or training config (see configs/)")
    pl.add_argument("--gpus", type=int, required=True)
    pl.add_argument("--gpu-memory-gb", type=float, required=True, help="memory per GPU (GiB)")
    pl.add_argument("--json", action="store_true", help="every candidate as JSON instead of the table")
    shown = pl.add_mutually_exclusive_group()
    shown.add_argument("--top", type=int, default=10, help="rows of each table (default 10)")
    shown.add_argument("--all", action="store_true", help="every layout, fitting or not")
    _hardware_arguments(pl)
    pl.add_argument("overrides", nargs="*", metavar="key=value")

    d = sub.add_parser("demo", help="crawl -> corpus -> pretrain the tiny GPT -> SFT -> reward model -> PPO-ptx")
    d.add_argument("--nproc", type=int, default=8, help="local processes for pretraining (tp 2, pp 2 on a multiple of 4, else data parallel); "
                   "the InstructGPT stage then runs on min(nproc, 8)")
    d.add_argument("--run-dir", default="runs/demo")
    d.add_argument("--pretrain-only", action="store_true", help="stop after pretraining (no SFT, RM, PPO)")
    d.add_argument("overrides", nargs="*", metavar="key=value")

    c = sub.add_parser("corpus", help="the CommonCrawl corpus pipeline")
    csub = c.add_subparsers(dest="corpus_command", required=True)
    cr = csub.add_parser("run", help="WARC/WET/JSONL -> filtered, deduplicated, tokenized shards")
    again = cr.add_mutually_exclusive_group()
    again.add_argument("--restart", action="store_true", help="clear output.dir's earlier run and start over")
    again.add_argument("--extend", action="store_true",
                       help="add new inputs to output.dir's run (redoes dedup, tokenizer and tokens over all)")
    cr.add_argument("--config", help="corpus config YAML (see configs/data/commoncrawl-example.yaml)")
    cr.add_argument("overrides", nargs="*", metavar="key=value")

    ct = csub.add_parser("task", help="run one stage of a corpus run (what the Slurm executor's jobs call)")
    ct.add_argument("--config", required=True)
    ct.add_argument("--stage", required=True)
    ct.add_argument("--index", type=int, help="task index: a shard, or a dedup part (default: $SLURM_ARRAY_TASK_ID)")
    ct.add_argument("--stride", type=int, help="also run tasks index + stride, index + 2*stride, ... "
                                               "(default: task index alone)")

    rp = csub.add_parser("report", help="plots (funnel, lengths, scores) and a summary table of a finished run")
    rp.add_argument("run_dir")

    cx = csub.add_parser("explain", help="one document's path through a corpus run: where it was dropped and why, "
                                         "or where it was kept; a duplicate's cluster")
    cx.add_argument("--run", required=True, help="the run's output.dir")
    cx.add_argument("--id", required=True, help="document id: <input path relative to the run's inputs>:<record index>")

    cm = csub.add_parser("mix", help="weight finished corpus runs into one mixture.json for training")
    cm.add_argument("--config", required=True, help="see configs/data/gpt3-mixture.yaml")
    cm.add_argument("overrides", nargs="*", metavar="key=value")

    tq = csub.add_parser("train-quality", help="train GPT-3's quality classifier (fastText): curated vs raw crawl")
    tq.add_argument("--positive", nargs="+", required=True, help="curated text: .txt, .jsonl[.gz], WARC/WET")
    tq.add_argument("--negative", nargs="+", required=True, help="raw crawl: WARC/WET, .jsonl[.gz], .txt")
    tq.add_argument("--out", required=True, help="where to write the model (.bin)")
    tq.add_argument("--epochs", type=int, default=10)

    t = sub.add_parser("tokenize", help="text/JSONL files -> Megatron .bin/.idx with a byte-level BPE")
    t.add_argument("--input", nargs="+", required=True)
    t.add_argument("--output-prefix", required=True)
    t.add_argument("--tokenizer", help="tokenizer.json, or a directory with GPT-2 vocab.json + merges.txt")
    t.add_argument("--vocab", help="GPT-2 vocab.json (with --merges)")
    t.add_argument("--merges", help="GPT-2 merges.txt (with --vocab)")
    t.add_argument("--vocab-size", type=int, help="train a new BPE of this size on the input")
    t.add_argument("--text-key", default="text", help="JSONL field holding the text")

    e = sub.add_parser("export-hf", help="a checkpoint -> a transformers GPT-2 directory (pre-LN, dense attention)")
    e.add_argument("--checkpoint", required=True, help="a checkpoint dir, or a run dir (its latest checkpoint)")
    e.add_argument("--out", required=True)
    e.add_argument("--tokenizer", help="tokenizer.json, or a directory with GPT-2 vocab.json + merges.txt (default: "
                                       "the run dir's, else the training data's)")

    g = sub.add_parser("generate", help="sample a completion from a checkpoint (KV cache, any TP size)")
    g.add_argument("--checkpoint", required=True, help="a checkpoint dir, or a run dir (its latest checkpoint)")
    g.add_argument("--prompt", required=True, help="the text to continue (empty: an unconditional sample)")
    g.add_argument("--max-new-tokens", type=int, help="default: 64, or what the context leaves after the prompt")
    g.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    g.add_argument("--top-k", type=int, default=0, help="0: no top-k cut")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--tokenizer", help="tokenizer.json, or a directory with GPT-2 vocab.json + merges.txt (default: "
                                       "the run dir's, else the training data's)")
    g.add_argument("--nproc", type=int, default=1, help="tensor-parallel ranks the model is split over")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    i = sub.add_parser("import-hf", help="a local GPT-2-format model directory -> a megagpt run dir with a checkpoint")
    i.add_argument("model_dir")
    i.add_argument("--out", required=True, help="new run dir; train from it with run.dir=OUT")
    i.add_argument("--make-vocab-size-divisible-by", type=int, default=128)

    ev = sub.add_parser("eval", help="evaluate a checkpoint: perplexity, or zero/few-shot tasks (local files)")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    ep = esub.add_parser("perplexity", help="sliding-window perplexity and bits per byte over shards or text")
    ep.add_argument("--data", nargs="+", required=True, help=".bin/.idx prefixes, .txt or .jsonl[.gz] files")
    ep.add_argument("--stride", type=int, help="tokens a window advances (default: half the context)")
    eh = esub.add_parser("harness", help="lm-evaluation-harness with megagpt checkpoints (--model megagpt "
                         "--model_args checkpoint=DIR; every lm_eval argument)", add_help=False)
    eh.add_argument("harness_args", nargs=argparse.REMAINDER)
    ei = esub.add_parser("icl", help="zero/one/few-shot in-context evaluation of a task file (configs/eval/)")
    ei.add_argument("--task", required=True, help="a task YAML (see configs/eval/)")
    ei.add_argument("--shots", type=int, default=0)
    ei.add_argument("--seed", type=int, default=1234, help="draws each record's shots")
    ei.add_argument("--limit", type=int, help="score only the first N test records")
    ei.add_argument("--corpus", nargs="+", help="training data (.bin/.idx prefixes, .txt, .jsonl): report the share "
                    "of the task's n-grams found there and the scores of its clean and dirty records (GPT-3)")
    for e in (ep, ei):
        e.add_argument("--checkpoint", required=True, help="a checkpoint dir, or a run dir (its latest checkpoint)")
        e.add_argument("--tokenizer", help="tokenizer.json, or a directory with GPT-2 vocab.json + merges.txt "
                                           "(default: the run dir's, else the training data's)")
        e.add_argument("--nproc", type=int, default=1, help="tensor-parallel ranks the model is split over")
        e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
        e.add_argument("--batch-size", type=int, default=8, help="sequences scored at once")
        e.add_argument("--output", help="also write the result (with per-record rows) as JSON here")

    s = sub.add_parser("submit", help="render a Slurm batch script from slurm/ and sbatch it")
    ssub = s.add_subparsers(dest="submit_command", required=True)
    for command, text in (("pretrain", "multi-node pretraining"), ("sft", "supervised fine-tuning"),
                          ("rm", "reward model training"), ("ppo", "PPO-ptx, its roles on their rank groups"),
                          ("finetune", "GPT-1 fine-tuning on a labelled task")):
        sp = ssub.add_parser(command, help=f"{text}: one task per GPU, requeued on preemption")
        sp.add_argument("--config", required=True)
        sp.add_argument("--nodes", type=int, required=True)  # launchers/submit.py checks these counts
        sp.add_argument("--gpus-per-node", type=int, help="GPUs (= tasks) per node")
        sp.add_argument("--cpu-tasks-per-node", type=int, help="tasks per node on a CPU-only cluster (gloo)")
        sp.add_argument("--cpus-per-task", type=int, default=8)
        sp.add_argument("--partition")
        sp.add_argument("--time", help="time limit: MINUTES, HH:MM:SS or D-HH:MM:SS")
        sp.add_argument("--save-lead", type=int, default=600, metavar="SECONDS",
                        help="Slurm signals the job this long before its time limit to finish the step and save "
                             "(default 600; it must cover a step and a save: run.dir/checkpoint_io.jsonl has saves' times)")
        sp.add_argument("--job-name", default=f"megagpt-{command}")
        sp.add_argument("--dry-run", action="store_true", help="print the script instead of submitting it")
        sp.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def _hardware_arguments(p: argparse.ArgumentParser) -> None:
    from megagpt.planner.timing import Hardware

    hw = Hardware()
    p.add_argument("--gpu-tflops", type=float, default=hw.gpu_tflops,
                   help=f"dense peak at the run's precision (default {hw.gpu_tflops:g}: H100 bf16)")
    p.add_argument("--matmul-efficiency", type=float, default=hw.matmul_efficiency,
                   help=f"fraction of peak large matmuls reach (default {hw.matmul_efficiency:g})")
    p.add_argument("--intra-node-gbps", type=float, default=hw.intra_node_gbps,
                   help=f"all-reduce bus bandwidth inside a node, Gbit/s (default {hw.intra_node_gbps:g})")
    p.add_argument("--inter-node-gbps", type=float, default=hw.inter_node_gbps,
                   help=f"bandwidth per GPU between nodes, Gbit/s (default {hw.inter_node_gbps:g})")
    p.add_argument("--gpus-per-node", type=int, default=hw.gpus_per_node,
                   help="GPUs per node: tensor parallelism stays within one, traffic beyond it goes over the network")
    p.add_argument("--reserve-gb", type=float, default=4.0,
                   help="memory per GPU held back for the CUDA context, NCCL and fragmentation (default 4 GiB)")


def _hardware(args):
    from megagpt.planner.timing import Hardware

    return Hardware(gpu_tflops=args.gpu_tflops, matmul_efficiency=args.matmul_efficiency,
                    gpus_per_node=args.gpus_per_node, intra_node_gbps=args.intra_node_gbps,
                    inter_node_gbps=args.inter_node_gbps)


def cmd_plan(args) -> int:
    from megagpt.planner.search import plan, render

    cfg = load_config(args.config, args.overrides)
    hw = _hardware(args)
    plans = plan(cfg, args.gpus, args.gpu_memory_gb, hw, args.reserve_gb)
    if args.json:
        print(json.dumps([p.to_dict() for p in plans], indent=1))
    else:
        print(render(cfg, plans, args.gpus, hw, None if args.all else args.top))
    return 0


def cmd_dry_run(args, cfg: Config) -> int:
    import torch.distributed as dist

    from megagpt.parallel.distributed import free_port, quiet_library_warnings
    from megagpt.planner.dry_run import dry_run
    from megagpt.planner.search import check_request

    gpus = args.gpus if args.gpus is not None else args.nproc
    hw = _hardware(args)
    check_request(cfg, gpus, args.gpu_memory_gb, args.reserve_gb, hw)
    validate(cfg, gpus, check_data=False)
    quiet_library_warnings()
    # megatron-core's layers read their group's size and rank while being built: a world of one suffices
    own_world = not dist.is_initialized()
    if own_world:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        print(dry_run(cfg, gpus, args.gpu_memory_gb, hw, args.reserve_gb))
    finally:
        if own_world:
            dist.destroy_process_group()
    return 0


def cmd_submit(args) -> int:
    from launchers.submit import PretrainJob, submit_pretrain

    job = PretrainJob(config=args.config, overrides=list(args.overrides), nodes=args.nodes,
                      gpus_per_node=args.gpus_per_node, cpu_tasks_per_node=args.cpu_tasks_per_node,
                      cpus_per_task=args.cpus_per_task, partition=args.partition, time=args.time,
                      job_name=args.job_name, command=args.submit_command, save_lead=args.save_lead)
    result = submit_pretrain(job, args.dry_run)
    print(result, end="" if args.dry_run else "\n")
    return 0


def cmd_export_hf(args) -> int:
    from megagpt.hf import export_hf

    done = export_hf(args.checkpoint, args.out, args.tokenizer)
    print(f"megagpt: exported {done['checkpoint']} (step {done['step']}) to {done['out']}")
    return 0


def cmd_generate(args) -> int:
    from launchers.local import join_existing_world, launch_local
    from megagpt.files import check_utf8
    from megagpt.generation import Sampling, check_layout, checkpoint_config, run_generation
    from megagpt.parallel.distributed import local_world_size, quiet_library_warnings, resolve_device

    quiet_library_warnings()
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    sampling.check()
    try:
        check_utf8(args.prompt)  # bytes that are not UTF-8 reach Python as lone surrogates, which no tokenizer takes
    except ValueError:
        raise ConfigError("--prompt holds bytes that are not UTF-8 text") from None
    if args.tokenizer:
        from megagpt.data.tokenizer import check_tokenizer_flag

        check_tokenizer_flag(args.tokenizer)
    world = join_existing_world(args.nproc)
    _, cfg = checkpoint_config(args.checkpoint)
    check_layout(cfg, world or args.nproc)
    device = resolve_device(args.device, args.nproc if world is None else local_world_size())
    if world is None and args.nproc > 1:
        argv = ["generate", "--checkpoint", args.checkpoint, "--prompt", args.prompt,
                *(["--max-new-tokens", str(args.max_new_tokens)] if args.max_new_tokens is not None else []),
                "--temperature", str(args.temperature), "--top-k", str(args.top_k),
                "--top-p", str(args.top_p), "--seed", str(args.seed), "--device", args.device,
                *(["--tokenizer", args.tokenizer] if args.tokenizer else [])]
        return launch_local(args.nproc, argv, device)
    completion = run_generation(args.checkpoint, args.prompt, sampling, args.tokenizer, args.device)
    if completion is not None:
        print(args.prompt + completion)
    return 0


def cmd_eval(args) -> int:
    from launchers.local import join_existing_world, launch_local
    from megagpt.eval.run import check_eval_args, eval_argv, run_eval
    from megagpt.generation import check_layout, checkpoint_config
    from megagpt.parallel.distributed import local_world_size, quiet_library_warnings, resolve_device

    quiet_library_warnings()
    check_eval_args(args)  # bad task files and flags fail here, before any process starts
    world = join_existing_world(args.nproc)
    _, cfg = checkpoint_config(args.checkpoint)
    check_layout(cfg, world or args.nproc, "eval")
    if args.eval_command == "perplexity" and args.stride and args.stride > cfg.model.seq_length:
        raise ConfigError(f"--stride {args.stride} must lie in [1, the model's context {cfg.model.seq_length}]")
    device = resolve_device(args.device, args.nproc if world is None else local_world_size())
    if world is None and args.nproc > 1:
        return launch_local(args.nproc, eval_argv(args), device)
    result = run_eval(args)
    if result is not None:
        print(result)
    return 0


def cmd_import_hf(args) -> int:
    from megagpt.hf import import_hf

    done = import_hf(args.model_dir, args.out, args.make_vocab_size_divisible_by)
    print(f"megagpt: imported {done['parameters']:,} parameters from {args.model_dir} into {done['checkpoint']}"
          + (f", and its tokenizer ({done['tokenizer']})" if done["tokenizer"] else ", without a tokenizer (none there: "
             "give eval, generate and export-hf --tokenizer)")
          + f"; train with run.dir={args.out} and the model section of {args.out}/model.yaml")
    return 0


def _stage(stage: str):
    """(preflight check (cfg, world), one rank's training (cfg)) of a training stage."""
    if stage == "sft":
        from megagpt.rlhf.sft import preflight_sft, sft

        return lambda cfg, world: preflight_sft(cfg), sft
    if stage == "rm":
        from megagpt.rlhf.reward import preflight_rm, rm

        return lambda cfg, world: preflight_rm(cfg), rm
    if stage == "ppo":
        from megagpt.rlhf.trainer import ppo, preflight_ppo

        return preflight_ppo, ppo
    if stage == "finetune":
        from megagpt.eval.finetune import finetune, preflight_finetune

        return lambda cfg, world: preflight_finetune(cfg), finetune
    from megagpt.train.pretrain import preflight_pretrain, pretrain

    return lambda cfg, world: preflight_pretrain(cfg), pretrain


def run_pretrain(cfg: Config, nproc: int, argv: list[str], stage: str = "pretrain") -> int:
    """Check, then launch or join the world and train: stage "pretrain", "sft", "rm" or "ppo" (megagpt.rlhf)."""
    from launchers.local import (join_existing_world, known_cpu_ranks, launch_local,
                                 start_rank_server)

    world = join_existing_world(nproc)
    with alike_on_each_node():
        check_stage_inputs(cfg, stage)
        validate(cfg, world or nproc)
    launching = world is None and nproc > 1
    if launching and known_cpu_ranks(cfg.run.device):
        start_rank_server(nproc)  # before this process imports torch: the server's imports overlap all of the below

    from megagpt.parallel.distributed import local_world_size, quiet_library_warnings, resolve_device
    from megagpt.train.checkpoint import preflight

    quiet_library_warnings()  # the data checks import megatron-core
    device = resolve_device(cfg.run.device, nproc if world is None else local_world_size())
    if device == "cpu" and cfg.train.precision == "fp16":
        with alike_on_each_node():  # before the ranks start (each of them said it, then the launcher)
            raise ConfigError("train.precision=fp16 needs a GPU (DeepSpeed has no fp16 on CPU); use fp32 or bf16")
    if launching and device == "cpu":
        start_rank_server(nproc)  # now that torch has counted the GPUs (a no-op if started above)
    check, train = _stage(stage)
    if os.path.exists(cfg.run.dir) and (world is None or os.environ.get("RANK") == "0"):  # (a file: refused)
        from megagpt.dir_lock import hold

        # a busy run.dir says so now, before the checks write there (a stage's tokenizer.json); rank 0 of the
        # run takes the lock itself once the world is up
        hold(cfg.run.dir, "run.dir", "training run").close()
    trained = cfg
    if stage == "finetune":  # its checkpoints hold the model as trained: with GPT-1's three tokens added
        from megagpt.eval.finetune import with_added_tokens

        trained = with_added_tokens(cfg)
    with alike_on_each_node():
        preflight(trained, world or nproc)  # a resume it refuses must not change run.dir: before check() writes there
        check(cfg, world or nproc)
    report_device(cfg.run.device, nproc if world is None else local_world_size(), world)
    if launching:
        from megagpt.train.pretrain import PREEMPTED

        return launch_local(nproc, argv, device, preempted_marker=os.path.join(cfg.run.dir, PREEMPTED))
    from megagpt.parallel.distributed import shutdown_distributed
    from megagpt.train.pretrain import Preemption

    train(cfg)
    shutdown_distributed()
    return Preemption.release()


def report_device(requested: str, local_ranks: int, world: int | None) -> None:
    """Say when run.device=auto leaves this node's GPUs unused (fewer than its ranks): once, from the local
    launcher, or else from rank 0 of the world srun or torchrun started."""
    from launchers.local import DIE_WITH_LAUNCHER
    from megagpt.parallel.distributed import resolve_device, visible_gpus

    says = world is None or (os.environ.get("RANK") == "0" and DIE_WITH_LAUNCHER not in os.environ)
    if not (says and requested == "auto"):
        return
    gpus = visible_gpus()
    if gpus and resolve_device(requested, local_ranks) == "cpu":
        print(f"megagpt: {local_ranks} ranks on this node but {gpus} GPU{'s' * (gpus != 1)} visible to each: "
              f"running on CPU with gloo (run.device=cuda requires a GPU per rank)", file=sys.stderr)


def cmd_pretrain(args) -> int:
    with alike_on_each_node():  # under srun or torchrun every rank reads the same config
        cfg = load_config(args.config, args.overrides)
    if getattr(args, "dry_run", False):
        return cmd_dry_run(args, cfg)
    argv = [args.command, "--config", args.config, *args.overrides]
    return run_pretrain(cfg, args.nproc, argv, stage=args.command)


def cmd_demo(args) -> int:
    from launchers.demo import run_demo
    from megagpt.parallel.distributed import quiet_library_warnings

    quiet_library_warnings()
    return run_demo(args.nproc, args.run_dir, list(args.overrides), args.pretrain_only)


def cmd_tokenize(args) -> int:
    from megagpt.data.shards import read_documents, text_kind, write_shard
    from megagpt.data.tokenizer import SMALLEST_VOCAB, Tokenizer
    from megagpt.files import file_identity

    for path in args.input:
        if not os.path.isfile(path):
            raise ConfigError(f"--input {path}: file not found")
    prefix = args.output_prefix
    if not os.path.basename(prefix) or os.path.isdir(prefix):  # PREFIX.bin would be a hidden DIR/.bin
        raise ConfigError(f"--output-prefix {prefix!r} names a directory, not the shard's files: give a name in it, "
                          f"like {os.path.join(prefix, 'shard')!r} for shard.bin, shard.idx and shard.tokenizer.json")
    inputs = list({file_identity(p): p for p in args.input}.values())  # a file given twice (or linked) is read once
    if len(inputs) < len(args.input):
        print(f"megagpt tokenize: {len(args.input) - len(inputs)} --input path(s) name a file given already; "
              f"each file is read once", file=sys.stderr)
    chosen = [bool(args.tokenizer), bool(args.vocab or args.merges), args.vocab_size is not None]
    if sum(chosen) != 1:
        raise ConfigError("give exactly one of --tokenizer, --vocab/--merges, --vocab-size")
    if args.vocab_size is not None and args.vocab_size < SMALLEST_VOCAB:
        raise ConfigError(f"--vocab-size {args.vocab_size} must be at least {SMALLEST_VOCAB} "
                          f"(256 byte tokens and the end-of-document token)")
    for path in inputs:  # each read as its name says, before a tokenizer is trained on any
        text_kind(path)
    if args.tokenizer:
        tok = Tokenizer.load(args.tokenizer)
    elif args.vocab or args.merges:
        if not (args.vocab and args.merges):
            raise ConfigError("--vocab and --merges go together")
        tok = Tokenizer.from_gpt2_files(args.vocab, args.merges)
    # a shard of nothing would stop training and evaluation later, far from here (and replace a good one now)
    if not any(read_documents(inputs, args.text_key)):
        raise DataError(f"--input {' '.join(inputs)}: no text to tokenize (every document is empty)")
    if args.vocab_size is not None:
        tok = Tokenizer.train(read_documents(inputs, args.text_key), args.vocab_size)
    counts = write_shard(args.output_prefix, read_documents(inputs, args.text_key), tok)
    # beside the shard, whichever way it was chosen: training and evaluation compare it with the model's
    tok.save(args.output_prefix + ".tokenizer.json")
    print(f"wrote {args.output_prefix}.bin/.idx: {counts['documents']} documents, {counts['tokens']} tokens, "
          f"vocab {tok.vocab_size}, eod id {tok.eod}")
    return 0


def cmd_corpus(args) -> int:
    if args.corpus_command == "train-quality":
        return cmd_train_quality(args)
    if args.corpus_command == "task":
        from data_pipeline.config import load_corpus_config
        from data_pipeline.slurm_executor import run_task

        index = args.index if args.index is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", -1))
        run_task(load_corpus_config(args.config, check_inputs=False), args.stage, index if index >= 0 else None,
                 args.stride)
        return 0
    if args.corpus_command == "report":
        from data_pipeline.report import summary_table, write_report

        for path in write_report(args.run_dir):
            print(f"wrote {path}")
        with open(os.path.join(args.run_dir, "stats.json")) as f:
            print(summary_table(json.load(f)))
        return 0
    if args.corpus_command == "explain":
        from data_pipeline.explain import explain

        print("\n".join(explain(args.run, args.id)))
        return 0
    if args.corpus_command == "mix":
        from data_pipeline.mixture import load_mix_config, mix

        summary = mix(load_mix_config(args.config, args.overrides))
        for s in summary["sources"]:
            print(f"{s['source']:<16} weight {s['weight']:.4f}  {s['tokens']:>14,} tokens"
                  + (f"  {s['epochs']:.2f} epochs" if "epochs" in s else ""))
        return 0
    from data_pipeline.config import load_corpus_config
    from data_pipeline.pipeline import run
    from megagpt.parallel.distributed import quiet_library_warnings

    quiet_library_warnings()
    cfg = load_corpus_config(args.config, args.overrides)
    if cfg.executor.kind == "slurm":
        from data_pipeline.slurm_executor import submit

        submit(cfg, mode=run_mode(args))  # which names the jobs as it queues them
        if not cfg.executor.wait:
            return 0
        with open(os.path.join(cfg.output.dir, "stats.json")) as f:
            summary = json.load(f)
    else:
        summary = run(cfg, mode=run_mode(args))
    stages = summary["stages"]
    skipped = sum(stages.get("read", {}).get("skipped", {}).values())
    print(f"megagpt corpus: {stages.get('read', {}).get('in', 0)} records read"
          f"{f' ({skipped} more holding no page skipped)' if skipped else ''}, {summary['documents']} documents kept, "
          f"{summary['tokens']} tokens, {len(summary['errors'])} file errors; see {cfg.output.dir}/stats.json")
    if "kept_nothing" in summary:
        from data_pipeline.pipeline import kept_nothing_why

        print(f"megagpt corpus: kept nothing, so no mixture.json; {kept_nothing_why(summary['kept_nothing'])}; "
              f"the reasons are in {cfg.output.dir}/dropped/")
    return 0


def run_mode(args) -> str:
    return "restart" if args.restart else "extend" if args.extend else "resume"


def cmd_train_quality(args) -> int:
    from data_pipeline.quality import train_quality
    from data_pipeline.readers import input_kind, iter_texts

    for path in args.positive + args.negative:
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: file not found")
        input_kind(path)
    counts = train_quality(iter_texts(args.positive), iter_texts(args.negative), args.out, epochs=args.epochs)
    pos, neg = counts["positive_mean_score"], counts["negative_mean_score"]
    print(f"megagpt corpus: trained {args.out} on {counts['positive']} curated and {counts['negative']} crawl documents"
          f"; their mean scores: curated {pos:.3f}, crawl {neg:.3f}")
    if pos - neg < 0.5:
        print(f"megagpt corpus: warning: {args.out} barely tells its own training examples apart, so its scores say "
              f"little (the Pareto rule keeps a page of score 0.5 at 2.6%): train on more documents, or raise "
              f"--epochs (now {args.epochs})", file=sys.stderr)
    return 0


COMMANDS = {"pretrain": cmd_pretrain, "demo": cmd_demo, "tokenize": cmd_tokenize, "corpus": cmd_corpus,
            "export-hf": cmd_export_hf, "import-hf": cmd_import_hf, "generate": cmd_generate, "sft": cmd_pretrain,
            "rm": cmd_pretrain, "ppo": cmd_pretrain, "finetune": cmd_pretrain, "eval": cmd_eval,
            "submit": cmd_submit, "plan": cmd_plan}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["eval", "harness"]:  # lm_eval's own arguments, which argparse here would not pass through
        from megagpt.eval.harness import main as harness

        try:
            harness(argv[2:])
        except MegagptError as exc:  # a bad checkpoint in --model_args, say: one line, as every command says it
            if prints_here(exc):
                print(f"megagpt: error: {exc}", file=sys.stderr)
            sys.exit(2)
        sys.exit(0)
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # overrides may sit between options
    if extra and (not hasattr(args, "overrides") or any(x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    try:
        for name in COUNTS:  # (plan's --gpus and submit's counts say more where they are checked)
            value = getattr(args, name, None)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {value} must be at least 1")
        code = COMMANDS[args.command](args)
    except MegagptError as exc:
        if prints_here(exc):
            print(f"megagpt: error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


def console() -> None:
    """The `megagpt` command and `python -m launchers.cli`: main(), then an exit that skips torch's teardown
    (launchers.local.exit_now). A bug's traceback ends the process as usual."""
    from launchers.local import exit_now

    try:
        main()
    except SystemExit as exc:
        exit_now(exc.code)
    except KeyboardInterrupt:  # Ctrl-C before training handles it (saving); during training it never comes here
        print("megagpt: interrupted", file=sys.stderr, flush=True)
        exit_now(130)
    except BrokenPipeError:  # `megagpt corpus explain ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit must not fail again
        exit_now(141)  # as a process that SIGPIPE ended


if __name__ == "__main__":
    console()
