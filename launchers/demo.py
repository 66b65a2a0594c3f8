"""`megagpt demo`: CommonCrawl -> corpus -> pretraining -> SFT -> reward model -> PPO-ptx, on what it makes.

    <run-dir>/crawl/            8 generated WARC files (English, copies, foreign, spam, broken records)
    <run-dir>/corpus/           the corpus pipeline's output and mixture.json
    <run-dir>/                  the pretraining run (configs/demo/tiny.yaml)
    <run-dir>/align/data/       demonstrations, comparisons and prompts with a planted preference
                                (megagpt.rlhf.demo_data: answers that name "file" are better)
    <run-dir>/align/{sft,rm,ppo}/   the three InstructGPT runs (configs/rlhf/)

Every step resumes: a second `megagpt demo` finds each run finished and goes on.
Command-line overrides apply to pretraining; run.device reaches every stage.
"""

from __future__ import annotations

import os
from importlib import resources

from megagpt.config import load_config, validate

# configs/ ships inside the package as megagpt.configs (see pyproject.toml), so an installed megagpt
# finds the demo configs from any directory; installed packages are plain files, which the ranks' command line names.
DEMO_CONFIG = str(resources.files("megagpt.configs") / "demo" / "tiny.yaml")
ALIGN_WORLD = 8  # configs/rlhf/*: 2+2+2+2 roles for PPO; other world sizes run the stages at tp = 1, colocated


def _rlhf_config(name: str) -> str:
    return str(resources.files("megagpt.configs") / "rlhf" / name)


def build_corpus(run_dir: str, vocab_size: int) -> str:
    """The demo crawl through the corpus pipeline; returns its mixture.json."""
    from data_pipeline.config import load_corpus_config
    from data_pipeline.pipeline import run
    from data_pipeline.synthetic import write_crawl

    crawl_dir, corpus_dir = os.path.join(run_dir, "crawl"), os.path.join(run_dir, "corpus")
    if not os.path.isdir(crawl_dir):
        truth = write_crawl(crawl_dir, files=8, pages=400)
        print(f"megagpt demo: wrote {crawl_dir}: {len(truth.english)} English pages, {len(truth.exact_pairs)} exact "
              f"and {len(truth.near_pairs)} near copies, {len(truth.foreign)} foreign, {len(truth.spam)} spam, "
              f"{len(truth.broken)} broken records, {len(truth.truncated_files)} truncated file")
    corpus = load_corpus_config(None, [f"input.paths=[{crawl_dir}/*.warc.gz]", f"output.dir={corpus_dir}",
                                       f"tokenize.vocab_size={vocab_size}", "langid.threshold=0.5"])
    summary = run(corpus)
    print(f"megagpt demo: corpus kept {summary['documents']} documents, {summary['tokens']} tokens "
          f"({corpus_dir}/stats.json)")
    return os.path.join(corpus_dir, "mixture.json")


def align(run_dir: str, mixture: str, nproc: int, shared: list[str]) -> int:
    """SFT, reward model and PPO-ptx from the pretraining run in run_dir; 0 when all three finished."""
    from launchers.cli import run_pretrain
    from megagpt.rlhf.demo_data import KEYWORD, write_instruct_data

    # more than 8 processes: the aligned stages' batches (16 sequences) would not split over them; 8 run them
    nproc = min(nproc, ALIGN_WORLD)
    align_dir = os.path.join(run_dir, "align")
    files = write_instruct_data(os.path.join(align_dir, "data"))
    print(f"megagpt demo: instruction data in {align_dir}/data (the planted preference: answers naming "
          f"{KEYWORD!r} rank higher)", flush=True)
    layout = [] if nproc == ALIGN_WORLD else ["parallel.tp=1", "parallel.pp=1"]
    dirs = {stage: os.path.join(align_dir, stage) for stage in ("sft", "rm", "ppo")}
    stages = [
        ("sft", "sft-tiny.yaml", [f"sft.data={files['demonstrations']}", f"sft.init={run_dir}"]),
        ("rm", "rm-tiny.yaml", [f"rm.data={files['comparisons']}", f"rm.demonstrations={files['demonstrations']}",
                                f"rm.init={dirs['sft']}"]),
        ("ppo", "tiny.yaml", [f"rlhf.prompts={files['prompts']}", f"rlhf.actor_init={dirs['sft']}",
                              f"rlhf.reward_init={dirs['rm']}", f"data.mixture={mixture}"]
         + ([] if nproc == ALIGN_WORLD else ["rlhf.layout=null"])),
    ]
    for stage, config, inputs in stages:
        path = _rlhf_config(config)
        overrides = [*inputs, *layout, *shared, f"run.dir={dirs[stage]}"]
        code = run_pretrain(load_config(path, overrides), nproc, [stage, "--config", path, *overrides], stage=stage)
        if code:
            return code
    return 0


def run_demo(nproc: int, run_dir: str, overrides: list[str], pretrain_only: bool) -> int:
    from launchers.cli import run_pretrain
    from launchers.local import existing_world_size

    steps = load_config(DEMO_CONFIG, overrides).train.steps
    world = existing_world_size() or nproc
    # tiny.yaml's tp x pp = 2 x 2 needs a multiple of 4 processes; other worlds pretrain data parallel
    layout = [] if world % 4 == 0 else ["parallel.tp=1", "parallel.pp=1"]
    # the last step is saved: SFT starts from it (an explicit train.save_interval, or layout, still wins)
    overrides = [f"run.dir={run_dir}", f"train.save_interval={steps}", *layout, *overrides]
    cfg = load_config(DEMO_CONFIG, overrides)
    validate(cfg, world, check_data=False)
    mixture = build_corpus(run_dir, cfg.model.vocab_size)
    overrides.append(f"data.mixture={mixture}")
    code = run_pretrain(load_config(DEMO_CONFIG, overrides), nproc, ["pretrain", "--config", DEMO_CONFIG, *overrides])
    if code or pretrain_only or existing_world_size() is not None:
        return code  # under torchrun/srun each stage is its own job
    return align(run_dir, mixture, nproc, [o for o in overrides if o.startswith("run.device=")])
