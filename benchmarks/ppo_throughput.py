"""PPO throughput: megagpt's split role layout against colocated roles, and against TRL's PPO trainer.

    python benchmarks/ppo_throughput.py [--iterations 6] [--nproc 8] [--trl-python .venv-trl/bin/python]

Builds a small GPT-2-shaped policy (the demo corpus, 40 pretraining steps) and a reward model
from it, then runs the same PPO settings (prompts from megagpt.rlhf.demo_data, 16 rollouts
of up to 16 new tokens per iteration, 2 PPO epochs, beta 0.02, no ptx term since TRL has
none) three ways on this machine's cores:

    megagpt split       rlhf.layout 2+2+2+2 on --nproc 8 processes (each role DP=2; on 4k processes, k+k+k+k)
    megagpt colocated   all four roles on every one of the 8 processes (each role DP=8)
    TRL                 trl.experimental.ppo.PPOTrainer, one process, torch's threads on all cores,
                        on the same model exported with export-hf (benchmarks/trl_ppo.py, in the
                        venv of benchmarks/requirements-trl.txt; skipped when that venv is missing)

and prints samples/s (rollouts per second of wall time, first iteration excluded: start-up),
seconds per phase and generation tokens/s. Every run uses all the machine's cores, so
samples/s compare per core too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "demo", "tiny.yaml")
PPO = os.path.join(REPO, "configs", "rlhf", "tiny.yaml")
ROLLOUTS, NEW_TOKENS, EPOCHS = 16, 16, 2


def megagpt(*args: str, threads: str | None = None) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    if threads:
        env["OMP_NUM_THREADS"] = threads
    proc = subprocess.run([sys.executable, "-m", "launchers.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"megagpt {args[0]} failed:\n{proc.stderr[-3000:]}")


def build_models(work: str) -> dict:
    from megagpt.data.demo_corpus import build_demo_shard
    from megagpt.rlhf.demo_data import write_instruct_data

    prefix = build_demo_shard(os.path.join(work, "shard"), vocab_size=4096)
    files = write_instruct_data(os.path.join(work, "data"), comparisons=64)
    common = ["--nproc", "1", "parallel.tp=1", "parallel.pp=1", "run.tensorboard=false", "train.progress=false",
              "train.eval_interval=0"]
    policy, reward = os.path.join(work, "policy"), os.path.join(work, "rm")
    megagpt("pretrain", "--config", TINY, *common, f"data.prefixes=[{prefix}]", f"run.dir={policy}",
            "train.steps=40", "train.save_interval=40")
    megagpt("rm", "--config", os.path.join(REPO, "configs", "rlhf", "rm-tiny.yaml"), *common,
            f"rm.data={files['comparisons']}", f"rm.demonstrations={files['demonstrations']}", f"rm.init={policy}",
            f"run.dir={reward}", "train.steps=10", "train.save_interval=10")
    megagpt("export-hf", "--checkpoint", policy, "--out", os.path.join(work, "hf"))
    return {"policy": policy, "reward": reward, "prompts": files["prompts"], "hf": os.path.join(work, "hf")}


def run_megagpt(models: dict, run_dir: str, nproc: int, iterations: int, layout: str) -> dict:
    megagpt("ppo", "--config", PPO, "--nproc", str(nproc), f"rlhf.prompts={models['prompts']}",
            f"rlhf.actor_init={models['policy']}", f"rlhf.reward_init={models['reward']}", f"run.dir={run_dir}",
            "run.tensorboard=false", "train.progress=false", "train.save_interval=0", f"train.steps={iterations}",
            "rlhf.ptx_coef=0", f"rlhf.rollout_batch_size={ROLLOUTS}", f"rlhf.max_new_tokens={NEW_TOKENS}",
            f"rlhf.ppo_epochs={EPOCHS}", "rlhf.micro_batch_size=2", "rlhf.kl_coef=0.02", layout,
            threads=str(os.cpu_count() or 1) if nproc == 1 else None)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        steady = [json.loads(line) for line in f][1:]
    total = sum(m["step_time_s"] for m in steady)
    generate = sum(m["time_generate_s"] for m in steady)
    return {"samples_per_s": ROLLOUTS * len(steady) / total, "generate_s": generate / len(steady),
            "score_s": sum(m["time_score_s"] for m in steady) / len(steady),
            "train_s": sum(m["time_train_s"] for m in steady) / len(steady),
            "gen_tokens_per_s": sum(ROLLOUTS * m["response_length"] for m in steady) / generate}


def run_trl(python: str, models: dict, work: str, iterations: int) -> dict | None:
    if not os.path.exists(python):
        return None
    cores = str(os.cpu_count() or 1)
    proc = subprocess.run([python, os.path.join(REPO, "benchmarks", "trl_ppo.py"), models["hf"], models["prompts"],
                           os.path.join(work, "trl"), str(iterations), str(ROLLOUTS), str(NEW_TOKENS), str(EPOCHS)],
                          env={**os.environ, "OMP_NUM_THREADS": cores, "CUDA_VISIBLE_DEVICES": ""},
                          capture_output=True, text=True)
    if proc.returncode:
        print(f"TRL run failed:\n{proc.stderr[-3000:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cell(value: float, fmt: str) -> str:
    return "-" if value != value else format(value, fmt)  # NaN: a figure TRL does not report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--nproc", type=int, default=8)
    parser.add_argument("--trl-python", default=os.path.join(REPO, ".venv-trl", "bin", "python"))
    args = parser.parse_args()
    if args.nproc < 4 or args.nproc % 4:
        parser.error(f"--nproc {args.nproc}: the split layout gives each of the four roles the same number of ranks")
    if args.iterations < 2:  # the first is start-up, left out of every rate
        parser.error(f"--iterations {args.iterations}: at least 2")
    sys.path.insert(0, REPO)
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        models = build_models(work)
        print(f"models built in {time.perf_counter() - start:.0f} s; {os.cpu_count()} cores")
        # TP = 1 in every role: at this model size on CPU, TP is all communication and no relief
        k = args.nproc // 4
        roles = ", ".join(f"{role}: {{ranks: {k}}}" for role in ("actor", "critic", "reward", "reference"))
        split = f"rlhf.layout={{{roles}}}"
        rows = {f"megagpt split {k}+{k}+{k}+{k} ({args.nproc} proc)":
                run_megagpt(models, os.path.join(work, "split"), args.nproc, args.iterations, split),
                f"megagpt colocated ({args.nproc} proc)":
                run_megagpt(models, os.path.join(work, "colocated"), args.nproc, args.iterations, "rlhf.layout=null"),
                "megagpt colocated (1 proc, all threads)":
                run_megagpt(models, os.path.join(work, "one"), 1, args.iterations, "rlhf.layout=null")}
        trl = run_trl(args.trl_python, models, work, args.iterations)
        if trl is not None:
            rows["TRL PPOTrainer (1 proc, all threads)"] = trl
    print(f"\n{'run':<42}{'samples/s':>10}{'generate s':>12}{'score s':>9}{'train s':>9}{'gen tok/s':>11}")
    for name, r in rows.items():
        cells = [_cell(r[k], f) for k, f in (("generate_s", ".3f"), ("score_s", ".3f"), ("train_s", ".3f"),
                                             ("gen_tokens_per_s", ".0f"))]
        print(f"{name:<42}{r['samples_per_s']:>10.2f}{cells[0]:>12}{cells[1]:>9}{cells[2]:>9}{cells[3]:>11}")
    if trl is None and not os.path.exists(args.trl_python):
        print(f"TRL not run (create {args.trl_python} from benchmarks/requirements-trl.txt)")


if __name__ == "__main__":
    main()
