"""Slurm scripts (`megagpt submit pretrain --dry-run`, the corpus stages): what they hold, and every value
that must not reach them."""

from __future__ import annotations

import os
import subprocess

import pytest

from megagpt.errors import ConfigError, SlurmError
from tests.conftest import REPO, TINY, megagpt


@pytest.fixture
def no_cluster(monkeypatch):
    """Partition checks ask sinfo; here it knows 'gpu' and 'debug'."""
    import megagpt.slurm as slurm

    real_run = subprocess.run

    def fake_run(cmd, *a, **kw):
        if cmd[0] == "sinfo":
            return subprocess.CompletedProcess(cmd, 0, "gpu\ndebug\n", "")
        return real_run(cmd, *a, **kw)

    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm.subprocess, "run", fake_run)


def job(demo_prefix, tmp_path, **kw):
    from launchers.submit import PretrainJob

    base = dict(config=TINY, overrides=[f"data.prefixes=[{demo_prefix}]", f"run.dir={tmp_path}/run"], nodes=2,
                gpus_per_node=4)
    return PretrainJob(**{**base, **kw})


def test_dry_run_renders_a_multi_node_script(no_cluster, demo_prefix, tmp_path):
    from launchers.submit import render_pretrain

    script, _ = render_pretrain(job(demo_prefix, tmp_path, partition="gpu", time="1-00:00:00"))
    lines = script.splitlines()
    for expected in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                     "#SBATCH --partition=gpu", "#SBATCH --time=1-00:00:00", "#SBATCH --signal=USR1@600",
                     "#SBATCH --requeue", f"#SBATCH --output={tmp_path}/run/slurm/%x-%j.out"]:
        assert expected in lines
    srun = next(line for line in lines if line.startswith("srun "))
    assert f"--config {TINY}" in srun and f"'data.prefixes=[{demo_prefix}]'" in srun
    # sbatch runs a job on whichever of several partitions has room first (the list was refused)
    listed, _ = render_pretrain(job(demo_prefix, tmp_path, partition="gpu,debug"))
    assert "#SBATCH --partition=gpu,debug" in listed.splitlines()
    # srun 22.05-23.02 gives each task one CPU unless told; the rendezvous is never the submitting shell's
    assert '--cpus-per-task="${SLURM_CPUS_PER_TASK}"' in srun
    assert lines.index("unset MASTER_ADDR MASTER_PORT") < lines.index(srun)
    assert srun.count("run.dir=") == 1 and f"run.dir={tmp_path}/run" in srun
    assert srun.endswith(" run.device=cuda")  # a GPU job never falls back to CPU on a node short of GPUs
    assert "{{" not in script and "" not in lines[:20]  # every placeholder filled, no blank #SBATCH gaps


def test_cpu_cluster_asks_for_no_gpus(no_cluster, demo_prefix, tmp_path):
    from launchers.submit import render_pretrain

    script, _ = render_pretrain(job(demo_prefix, tmp_path, gpus_per_node=None, cpu_tasks_per_node=2, nodes=2,
                                    overrides=[f"data.prefixes=[{demo_prefix}]", "parallel.pp=1"]))
    assert "--gpus-per-node" not in script and "#SBATCH --ntasks-per-node=2" in script
    assert next(line for line in script.splitlines() if line.startswith("srun ")).endswith(" run.device=cpu")


def test_fp16_on_cpu_tasks_is_refused_before_the_job_queues(no_cluster, demo_prefix, tmp_path):
    from launchers.submit import render_pretrain

    with pytest.raises(ConfigError, match="train.precision=fp16 needs a GPU .DeepSpeed has no fp16 on CPU., and "
                                          "--cpu-tasks-per-node asks for none"):
        render_pretrain(job(demo_prefix, tmp_path, gpus_per_node=None, cpu_tasks_per_node=2,
                            overrides=[f"data.prefixes=[{demo_prefix}]", "train.precision=fp16"]))


def test_cuda_on_cpu_tasks_is_refused_before_the_job_queues(no_cluster, demo_prefix, tmp_path):
    """The script asked for no GPUs and kept run.device=cuda: after the queue, every task stopped on its node."""
    from launchers.submit import render_pretrain

    with pytest.raises(ConfigError, match=r"^run.device=cuda needs a GPU per task, and --cpu-tasks-per-node asks for "
                                          r"none; use run.device=cpu \(or auto\), or --gpus-per-node$"):
        render_pretrain(job(demo_prefix, tmp_path, gpus_per_node=None, cpu_tasks_per_node=2,
                            overrides=[f"data.prefixes=[{demo_prefix}]", "parallel.pp=1", "run.device=cuda"]))


def test_a_device_the_user_chose_is_kept(no_cluster, demo_prefix, tmp_path):
    from launchers.submit import render_pretrain

    script, _ = render_pretrain(job(demo_prefix, tmp_path, overrides=[f"data.prefixes=[{demo_prefix}]",
                                                                       "run.device=cpu"]))
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert srun.count("run.device=") == 1 and "run.device=cpu" in srun
    script, _ = render_pretrain(job(demo_prefix, tmp_path, overrides=[f"data.prefixes=[{demo_prefix}]",
                                                                       "run.device=auto"]))
    assert next(line for line in script.splitlines() if line.startswith("srun ")).endswith(" run.device=cuda")


@pytest.mark.parametrize("change,message", [
    (dict(nodes=0), "--nodes=0 must be at least 1"),
    (dict(gpus_per_node=0), "--gpus-per-node=0 must be at least 1"),
    (dict(gpus_per_node=None), "give one of --gpus-per-node"),
    (dict(nodes=1, gpus_per_node=3), "3 ranks, not a multiple of parallel.tp*parallel.pp=2*2"),
    (dict(nodes=8, gpus_per_node=8), "train.global_batch_size=16 must be a multiple of train.micro_batch_size*dp=2*16"),
    (dict(partition="gpu; rm -rf ~"), "--partition='gpu; rm -rf ~' may only hold letters"),
    (dict(partition="bigmem"), "--partition='bigmem': no such Slurm partition 'bigmem' (known: debug, gpu)"),
    (dict(partition="gpu,bigmem"), "--partition='gpu,bigmem': no such Slurm partition 'bigmem' (known: debug, gpu)"),
    (dict(partition="gpu,"), "--partition='' may only hold letters"),
    (dict(job_name="x$(reboot)"), "--job-name='x$(reboot)' may only hold"),
    (dict(time="2 hours"), "--time='2 hours' is not a Slurm time"),
    (dict(time="3", save_lead=120), "--time 3: the job is signalled 120-180 s before its time limit"),
    (dict(time="0:01:30", save_lead=120), "--time 0:01:30: the job is signalled 120-180 s before its time limit"),
    (dict(time="0:11:00"), "--time 0:11:00: the job is signalled 600-660 s before its time limit to save and requeue (--save-lead 600)"),
    (dict(save_lead=0), "--save-lead=0 must be 1..65535 seconds"),
    (dict(save_lead=70000), "--save-lead=70000 must be 1..65535 seconds"),
    (dict(command="sft"), "sft.data is not set: megagpt sft trains on demonstrations"),
    (dict(config="/tmp/a;b.yaml"), "--config='/tmp/a;b.yaml': paths used in Slurm scripts"),
])
def test_bad_values_never_reach_the_script(no_cluster, demo_prefix, tmp_path, change, message):
    from launchers.submit import render_pretrain
    from megagpt.config import ConfigError

    with pytest.raises(ConfigError) as err:
        render_pretrain(job(demo_prefix, tmp_path, **change))
    assert message in str(err.value)


def test_unsafe_run_dir_and_override_are_refused(no_cluster, demo_prefix, tmp_path):
    from launchers.submit import render_pretrain
    from megagpt.config import ConfigError

    with pytest.raises(ConfigError, match="run.dir=.*no spaces, quotes or shell characters"):
        render_pretrain(job(demo_prefix, tmp_path, overrides=[f"data.prefixes=[{demo_prefix}]", "run.dir=/tmp/`id`"]))
    with pytest.raises(ConfigError, match="malformed override"):
        render_pretrain(job(demo_prefix, tmp_path, overrides=["train.steps; reboot"]))


def test_cli_dry_run_prints_and_writes_nothing(demo_prefix, tmp_path):
    out = megagpt("submit", "pretrain", "--config", TINY, "--nodes", "1", "--gpus-per-node", "4", "--dry-run",
                  f"data.prefixes=[{demo_prefix}]", f"run.dir={tmp_path}/run")
    assert out.stdout.startswith("#!/bin/bash") and "srun --kill-on-bad-exit=1" in out.stdout
    assert not os.path.exists(tmp_path / "run")
    bad = megagpt("submit", "pretrain", "--config", TINY, "--nodes", "0", "--gpus-per-node", "4", "--dry-run",
                  f"data.prefixes=[{demo_prefix}]", check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == "megagpt: error: --nodes=0 must be at least 1"


def test_corpus_stage_jobs_start_where_the_run_was_submitted(tmp_path, monkeypatch):
    """Not in the repository: relative config paths mean what they mean in a local run."""
    from data_pipeline.config import load_corpus_config
    from data_pipeline.slurm_executor import save_config, stage_script

    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_corpus_config(None, ["input.paths=[a.jsonl]", "output.dir=out", "executor.kind=slurm"])
    script = stage_script(cfg, "process", 1, save_config(cfg), None)
    assert f"\ncd {tmp_path}\n" in script and "#SBATCH --array=0-0" in script
    assert f"--config {tmp_path}/out/work/corpus-config.yaml --stage process" in script


def test_jobs_run_the_megagpt_submit_checked_not_a_package_in_the_submitting_directory(no_cluster, demo_prefix,
                                                                                        tmp_path, monkeypatch):
    """Jobs start in the submitting directory, and `python -m` put it first on sys.path: a project's own
    launchers/ or data_pipeline/ there was imported instead, and every task failed on the cluster."""
    from data_pipeline.config import load_corpus_config
    from data_pipeline.executors import mark_done
    from data_pipeline.pipeline import stage_tasks
    from data_pipeline.runs import Run
    from data_pipeline.slurm_executor import save_config, stage_script
    from launchers.submit import render_pretrain

    for name in ("launchers", "data_pipeline"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('the decoy in the submitting directory')\n")
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "n1", "SLURM_CPUS_PER_TASK": "1"}
    cfg = load_corpus_config(None, ["input.paths=[a.jsonl]", "output.dir=out", "executor.kind=slurm"])
    script = stage_script(cfg, "process", 1, save_config(cfg), None)
    Run(cfg, "resume").close()
    mark_done(cfg.output.dir, "process", stage_tasks(cfg, "process")[0])  # the task reads its config and ends
    task = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert task.returncode == 0, task.stderr
    # the ranks' srun line, with an srun that runs the command with --help
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@" --help\n')
    (tmp_path / "bin" / "srun").chmod(0o755)
    script, _ = render_pretrain(job(demo_prefix, tmp_path))
    ranks = subprocess.run(["bash", "-c", script], env={**env, "PATH": f"{tmp_path}/bin:{os.environ['PATH']}"},
                           capture_output=True, text=True)
    assert ranks.returncode == 0 and "usage: megagpt" in ranks.stdout, ranks.stderr


def test_corpus_arrays_stay_within_max_array_size(tmp_path, monkeypatch):
    """sbatch refuses an array past slurm.conf's MaxArraySize (1001 by default), and a CommonCrawl run has tens of
    thousands of files: with more shards than that, array task i runs shards i, i + tasks, i + 2 tasks, ..."""
    from data_pipeline import slurm_executor
    from data_pipeline.config import load_corpus_config
    from data_pipeline.slurm_executor import run_task, save_config, stage_script

    for i in range(7):
        (tmp_path / f"{i}.jsonl").write_text('{"text": "x"}\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_corpus_config(None, ["input.paths=['*.jsonl']", "output.dir=out", "executor.kind=slurm"])
    shard_stage = next(stage for stage, kind in slurm_executor.STAGES if kind == "shard")
    reduce_stage = next(stage for stage, kind in slurm_executor.STAGES if kind == "reduce")
    script = stage_script(cfg, shard_stage, 7, save_config(cfg), None, max_tasks=3)
    assert "#SBATCH --array=0-2" in script and f"--stage {shard_stage} --stride 3" in script
    script = stage_script(cfg, shard_stage, 7, save_config(cfg), None)  # the default MaxArraySize, 1001
    assert "#SBATCH --array=0-6" in script and "--stride 7" in script
    assert "--array" not in stage_script(cfg, reduce_stage, 7, save_config(cfg), "12", max_tasks=3)

    from data_pipeline.runs import Run

    Run(cfg, "resume").close()  # the run record the tasks read their shards from
    ran = []
    monkeypatch.setattr("data_pipeline.pipeline.run_task", lambda cfg, stage, task: ran.append(int(task)))
    run_task(cfg, shard_stage, 1, stride=3)
    assert ran == [1, 4]
    run_task(cfg, shard_stage, 1, stride=3)  # done shards are skipped
    run_task(cfg, shard_stage, 2, stride=3)
    assert ran == [1, 4, 2, 5]
    run_task(cfg, shard_stage, 0)  # --index alone: that shard
    assert ran == [1, 4, 2, 5, 0]


def test_corpus_reduce_steps_get_their_own_time_and_memory(tmp_path, monkeypatch):
    """The reduce steps run one process over the whole corpus (dedup holds every signature): with the shard tasks'
    --time and the cluster's default memory, a CommonCrawl run's dedup ran out of either."""
    from data_pipeline import slurm_executor
    from data_pipeline.config import load_corpus_config
    from data_pipeline.slurm_executor import save_config, stage_script

    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    monkeypatch.chdir(tmp_path)
    base = ["input.paths=[a.jsonl]", "output.dir=out", "executor.kind=slurm", "executor.time=01:00:00",
            "executor.mem=4G"]
    shard_stage, reduce_stage = (next(s for s, k in slurm_executor.STAGES if k == kind) for kind in ("shard", "reduce"))
    for extra, reduce_lines in (([], ["#SBATCH --time=01:00:00", "#SBATCH --mem=4G"]),
                                (["executor.reduce_time=1-00:00:00", "executor.reduce_mem=500G"],
                                 ["#SBATCH --time=1-00:00:00", "#SBATCH --mem=500G"])):
        cfg = load_corpus_config(None, base + extra)
        shard_lines = stage_script(cfg, shard_stage, 1, save_config(cfg), None).splitlines()
        assert "#SBATCH --time=01:00:00" in shard_lines and "#SBATCH --mem=4G" in shard_lines
        lines = stage_script(cfg, reduce_stage, 1, save_config(cfg), "7").splitlines()
        assert all(line in lines for line in reduce_lines)
    with pytest.raises(ConfigError, match="executor.reduce_mem='lots' is not a Slurm memory size"):
        load_corpus_config(None, base + ["executor.reduce_mem=lots"])


def test_dedup_part_tasks_default_to_the_reduce_resources(tmp_path, monkeypatch):
    """With one part a dedup-exact or dedup-bands task holds about what the dedup reduce holds: a config tuned for
    the reduce must not send them out with the shard tasks' memory. dedup_time/dedup_mem set them apart."""
    from data_pipeline.config import load_corpus_config
    from data_pipeline.slurm_executor import save_config, stage_script

    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    monkeypatch.chdir(tmp_path)
    base = ["input.paths=[a.jsonl]", "output.dir=out", "executor.kind=slurm", "executor.time=01:00:00",
            "executor.mem=4G"]
    reduce = ["executor.reduce_time=1-00:00:00", "executor.reduce_mem=500G"]
    for extra, want in (([], ("01:00:00", "4G")), (reduce, ("1-00:00:00", "500G")),
                        (reduce + ["executor.dedup_time=02:00:00", "executor.dedup_mem=40G"], ("02:00:00", "40G"))):
        cfg = load_corpus_config(None, base + extra)
        for stage in ("dedup-exact", "dedup-bands"):
            lines = stage_script(cfg, stage, 3, save_config(cfg), "7").splitlines()
            assert f"#SBATCH --time={want[0]}" in lines and f"#SBATCH --mem={want[1]}" in lines, (extra, stage)
            assert "#SBATCH --array=0-2" in lines
    with pytest.raises(ConfigError, match="executor.dedup_mem='lots' is not a Slurm memory size"):
        load_corpus_config(None, base + ["executor.dedup_mem=lots"])
    with pytest.raises(ConfigError, match="executor.dedup_time='soon' is not a Slurm time"):
        load_corpus_config(None, base + ["executor.dedup_time=soon"])


def test_max_array_size_is_read_from_the_cluster(monkeypatch):
    import subprocess

    from megagpt import slurm

    def scontrol(out, code=0):
        return lambda *a, **kw: subprocess.CompletedProcess(a, code, stdout=out, stderr="")

    monkeypatch.setattr(slurm.subprocess, "run", scontrol("MaxArraySize            = 40001\nMaxJobCount = 10000\n"))
    assert slurm.max_array_size() == 40001
    monkeypatch.setattr(slurm.subprocess, "run", scontrol("", 1))
    assert slurm.max_array_size() == 1001


def test_submit_ppo_runs_the_ppo_command_on_a_world_its_roles_fill(no_cluster, tmp_path):
    from launchers.submit import PretrainJob, render_pretrain

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Q: a?\\nA:"}\n')
    config = os.path.join(os.path.dirname(TINY), "..", "rlhf", "tiny.yaml")
    overrides = [f"rlhf.prompts={prompts}", "rlhf.actor_init=runs/sft", "rlhf.reward_init=runs/rm", "rlhf.ptx_coef=0",
                 f"run.dir={tmp_path}/ppo"]
    script, _ = render_pretrain(PretrainJob(config=config, overrides=overrides, nodes=2, gpus_per_node=4,
                                            command="ppo", job_name="megagpt-ppo"))
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert " -m launchers.cli ppo --config " in srun and "#SBATCH --job-name=megagpt-ppo" in script
    with pytest.raises(ConfigError, match="gives 2 \\+ 2 \\+ 2 \\+ 2 = 8 ranks to the roles, but the world has 4"):
        render_pretrain(PretrainJob(config=config, overrides=overrides, nodes=1, gpus_per_node=4, command="ppo"))


def test_slurm_times_read_as_sbatch_reads_them():
    from megagpt.slurm import time_seconds

    assert [time_seconds(t) for t in ("3", "3:30", "1:00:05", "2-1", "2-1:30", "2-1:30:10", "unlimited", "0")] == \
        [180, 210, 3605, 176400, 178200, 178210, None, None]


def test_a_resubmitted_run_whose_saves_outlast_the_lead_is_refused(no_cluster, demo_prefix, tmp_path):
    """Slurm kills a job still saving at its time limit, and does not requeue a job that timed out: with a lead
    shorter than the run's saves, every preemption lost the save it had started."""
    import json

    from launchers.submit import render_pretrain

    run = tmp_path / "run"
    run.mkdir()
    records = [{"event": "save", "step": 10, "seconds": 700.4}, {"event": "load", "step": 10, "seconds": 900.0}]
    (run / "checkpoint_io.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"event": "sa')
    with pytest.raises(ConfigError, match="--save-lead 600: this run's saves took up to 700 s .*checkpoint_io.jsonl"):
        render_pretrain(job(demo_prefix, tmp_path))
    script, _ = render_pretrain(job(demo_prefix, tmp_path, save_lead=1200))
    assert "#SBATCH --signal=USR1@1200" in script.splitlines()


def test_a_shipped_config_named_from_another_directory_is_the_one_the_script_runs(no_cluster, demo_prefix, tmp_path,
                                                                                   monkeypatch):
    """`--config configs/...` from outside a clone reads the package's copy; the script named ./configs/..., which
    is not there, and the job would have failed on the cluster."""
    from launchers.submit import render_pretrain

    monkeypatch.chdir(tmp_path)
    script, _ = render_pretrain(job(demo_prefix, tmp_path, config="configs/demo/tiny.yaml"))
    config = next(line for line in script.splitlines() if "--config" in line).split("--config ")[1].split()[0]
    assert os.path.isfile(config) and open(config).read() == open(TINY).read()


def test_tensor_parallel_groups_across_nodes_are_pointed_out(no_cluster, demo_prefix, tmp_path, capsys):
    from launchers.submit import render_pretrain

    render_pretrain(job(demo_prefix, tmp_path, nodes=2, gpus_per_node=4))  # tp 2 divides 4: no note
    assert capsys.readouterr().err == ""
    render_pretrain(job(demo_prefix, tmp_path, nodes=4, gpus_per_node=3, overrides=[
        f"data.prefixes=[{demo_prefix}]", f"run.dir={tmp_path}/run", "parallel.pp=1", "train.global_batch_size=24", "train.eval_samples=24"]))
    assert "parallel.tp=2 does not divide the 3 tasks per node: some tensor-parallel groups span two nodes" in \
        capsys.readouterr().err


def _corpus_on_fake_slurm(tmp_path, monkeypatch, *overrides, refuse_at=None):
    """submit() with sbatch faked: returns the scripts it was handed; the `refuse_at`-th is refused as a QOS's
    MaxSubmitJobs refuses."""
    from data_pipeline import slurm_executor
    from data_pipeline.config import load_corpus_config

    tmp_path.mkdir(exist_ok=True)
    for i in range(7):
        (tmp_path / f"{i}.jsonl").write_text('{"text": "x"}\n')
    handed = []

    def sbatch(path):
        if len(handed) == refuse_at:
            raise SlurmError(f"sbatch {path} failed: sbatch: error: QOSMaxSubmitJobPerUserLimit sbatch: error: "
                             f"Batch job submission failed: Job violates accounting/QOS policy (job submit limit, "
                             f"user's size and/or time limits)")
        handed.append(open(path).read())
        return str(100 + len(handed))

    monkeypatch.setattr(slurm_executor, "submit_script", sbatch)
    monkeypatch.setattr(slurm_executor, "max_array_size", lambda: 1001)
    cfg = load_corpus_config(None, [f"input.paths=[{tmp_path}/*.jsonl]", f"output.dir={tmp_path}/out",
                                    "executor.kind=slurm", "executor.wait=false", *overrides])
    slurm_executor.submit(cfg)
    return handed


def _queued(scripts) -> int:
    """The jobs the scripts queue, each array task counted."""
    import re

    arrays = [re.search(r"^#SBATCH --array=0-(\d+)", s, re.MULTILINE) for s in scripts]
    return sum(int(a[1]) + 1 if a else 1 for a in arrays)


@pytest.mark.parametrize("max_submit,per_array", [(None, 14), (100, 14), (60, 9), (12, 1)])
def test_corpus_run_queues_no_more_jobs_than_max_submit(tmp_path, monkeypatch, max_submit, per_array):
    """Every stage is queued at once and a QOS's MaxSubmitJobs counts each array task: 7 shards and 14 dedup band
    tasks queued 52 jobs, past a cap of 50 that sbatch then refused. The arrays share executor.max_submit less a
    job for each reduce step; each task takes every k-th of its stage's tasks."""
    import re

    from data_pipeline.slurm_executor import run_task

    extra = [] if max_submit is None else [f"executor.max_submit={max_submit}"]
    scripts = _corpus_on_fake_slurm(tmp_path, monkeypatch, *extra)
    assert len(scripts) == 9 and _queued(scripts) <= (max_submit or 52)
    bands = next(s for s in scripts if "--stage dedup-bands" in s)
    assert f"#SBATCH --array=0-{per_array - 1}\n" in bands and f"--stride {per_array}" in bands
    ran = []  # the array tasks of the process stage, run as Slurm would: together they do every shard once
    monkeypatch.setattr("data_pipeline.pipeline.run_task", lambda cfg, stage, task: ran.append(task))
    process = next(s for s in scripts if "--stage process" in s)
    last, stride = (int(re.search(pattern, process)[1]) for pattern in (r"--array=0-(\d+)", r"--stride (\d+)"))
    from data_pipeline.config import load_corpus_config

    cfg = load_corpus_config(f"{tmp_path}/out/work/corpus-config.yaml", check_inputs=False)
    for index in range(last + 1):
        run_task(cfg, "process", index, stride)
    assert sorted(ran) == [f"{i:05d}" for i in range(7)]


def test_max_submit_below_one_job_a_stage_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"executor.max_submit=8 is fewer than the 9 jobs this run queues at the "
                                          r"least \(a job for each of its stages\)"):
        _corpus_on_fake_slurm(tmp_path, monkeypatch, "executor.max_submit=8")
    with pytest.raises(ConfigError, match=r"executor.max_submit=0 must be at least 1"):
        _corpus_on_fake_slurm(tmp_path, monkeypatch, "executor.max_submit=0")


def test_a_refused_submission_names_max_submit_and_cancels_the_stages_before_it(tmp_path, monkeypatch):
    """The jobs already queued would run a part of the run and hold output.dir, refusing the rerun that fixes the
    failure, until they ended: they are cancelled, or named where scancel fails."""
    from data_pipeline import slurm_executor

    cancelled = []
    monkeypatch.setattr(slurm_executor, "cancel_jobs", lambda jobs: cancelled.append(jobs))
    with pytest.raises(SlurmError, match=r"job submit limit.*The cluster caps the jobs you may queue .*set "
                                         r"executor.max_submit to the cap less the jobs you have queued; the jobs of "
                                         r"the stages before it \(process, dedup-index: 101, 102\) were cancelled, "
                                         r"and a rerun keeps the tasks they finished$"):
        _corpus_on_fake_slurm(tmp_path, monkeypatch, refuse_at=2)
    assert cancelled == [["101", "102"]]
    monkeypatch.setattr(slurm_executor, "cancel_jobs", lambda jobs: "scancel: error: Kill job error")
    monkeypatch.setattr(slurm_executor, "jobs_in_flight", lambda jobs: jobs)
    with pytest.raises(SlurmError, match=r"the jobs of the stages before it \(process: 101\) are still queued, as "
                                         r"scancel failed \(scancel: error: Kill job error\): scancel them, or wait "
                                         r"for them, before a rerun$"):
        _corpus_on_fake_slurm(tmp_path / "again", monkeypatch, refuse_at=1)
    monkeypatch.setattr(slurm_executor, "jobs_in_flight", lambda jobs: [])  # the one scancel failed for had ended
    with pytest.raises(SlurmError, match=r"\(process: 101\) were cancelled"):
        _corpus_on_fake_slurm(tmp_path / "ended", monkeypatch, refuse_at=1)
    with pytest.raises(SlurmError, match=r"job submit limit.*jobs you have queued$"):  # nothing queued before it
        _corpus_on_fake_slurm(tmp_path / "first", monkeypatch, refuse_at=0)


def test_the_wait_asks_squeue_every_executor_poll_seconds(tmp_path, monkeypatch):
    """Each squeue call is an RPC to the cluster's controller, and the wait made one a second for the hours a run
    takes; many sites ask scripts for one a minute at most."""
    from data_pipeline import slurm_executor

    sleeps = []
    monkeypatch.setattr(slurm_executor.time, "sleep", sleeps.append)
    for run, extra, every in (("default", [], 30.0), ("fast", ["executor.poll_seconds=0.5"], 0.5)):
        answers = iter([["101"], None, []])  # queued; squeue could not tell; drained
        monkeypatch.setattr(slurm_executor, "jobs_in_flight", lambda jobs: next(answers))
        with pytest.raises(SlurmError, match="did not finish"):  # the fake sbatch ran nothing
            _corpus_on_fake_slurm(tmp_path / run, monkeypatch, "executor.wait=true", *extra)
        assert sleeps == [every, every]
        sleeps.clear()
    for bad in ("0", "-1", ".nan", "7200"):
        with pytest.raises(ConfigError, match=r"executor.poll_seconds=\S+ must be more than 0 and at most 3600"):
            _corpus_on_fake_slurm(tmp_path / "bad", monkeypatch, f"executor.poll_seconds={bad}")


def test_the_jobs_are_named_once_queued_and_again_when_the_wait_is_interrupted(tmp_path, monkeypatch, capsys):
    """The ids were printed only after the queue drained, hours later; a Ctrl-C during the wait said 'interrupted'
    and left the run's jobs queued without naming them. The wait's end is not the run's: they are not cancelled."""
    from data_pipeline import slurm_executor

    printed = []

    def interrupt(seconds):
        printed.append(capsys.readouterr().out)
        raise KeyboardInterrupt

    cancelled = []
    monkeypatch.setattr(slurm_executor.time, "sleep", interrupt)
    monkeypatch.setattr(slurm_executor, "cancel_jobs", cancelled.append)
    monkeypatch.setattr(slurm_executor, "jobs_in_flight", lambda jobs: ["108", "109"] if printed else jobs)
    with pytest.raises(KeyboardInterrupt):
        _corpus_on_fake_slurm(tmp_path, monkeypatch, "executor.wait=true")
    ids = ", ".join(str(i) for i in range(101, 110))
    assert printed == [f"megagpt corpus: submitted Slurm jobs {ids} (logs in {tmp_path}/out/work/slurm)\n"]
    assert capsys.readouterr().err == ("megagpt corpus: stopped waiting; the Slurm jobs 108, 109 are still queued or "
                                       "running and go on with the run (scancel 108 109 stops them)\n")
    assert cancelled == []


def test_partition_check_sees_hidden_partitions_and_does_not_wait_on_a_silent_controller(monkeypatch):
    """Without -a sinfo leaves out hidden partitions and other groups' (a user may be allowed on them), which were
    refused; without a controller sinfo retried for about 10 s on each submit before the check was skipped."""
    from megagpt import slurm

    def sinfo(cmd, **kw):
        assert kw.get("timeout") == slurm.SINFO_TIMEOUT_S
        return subprocess.CompletedProcess(cmd, 0, "gpu\ncpu\n" + ("gpu-priority\n" if "-a" in cmd else ""), "")

    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm.subprocess, "run", sinfo)
    assert slurm.check_partition("gpu-priority") == "gpu-priority"
    with pytest.raises(ConfigError, match=r"no such Slurm partition 'bigmem' \(known: cpu, gpu, gpu-priority\)"):
        slurm.check_partition("bigmem")

    def silent(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(slurm.subprocess, "run", silent)
    assert slurm.check_partition("bigmem") == "bigmem"  # sbatch is left to tell


def test_a_percent_in_a_log_directory_is_refused(no_cluster, demo_prefix, tmp_path):
    """#SBATCH --output reads % as a pattern: run.dir=runs/lr%j sent the job's log to runs/lr<jobid>/slurm/, a
    directory that does not exist, while the run trained in runs/lr%j; Slurm wrote no log at all."""
    from data_pipeline.config import load_corpus_config
    from launchers.submit import render_pretrain

    with pytest.raises(ConfigError, match=r"run.dir='.*/lr%j': sbatch would read the % in the job's log path as a "
                                          r"pattern \(%j: the job id\); use a path without %$"):
        render_pretrain(job(demo_prefix, tmp_path, overrides=[f"data.prefixes=[{demo_prefix}]",
                                                               f"run.dir={tmp_path}/lr%j"]))
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    corpus = [f"input.paths=[{tmp_path}/a.jsonl]", f"output.dir={tmp_path}/out%u"]
    with pytest.raises(ConfigError, match=r"output.dir='.*/out%u': sbatch would read the %"):
        load_corpus_config(None, corpus + ["executor.kind=slurm"])
    load_corpus_config(None, corpus)  # a local run writes no Slurm log


def test_the_checked_sbatch_lines_are_given_on_sbatchs_command_line(no_cluster, demo_prefix, tmp_path, monkeypatch):
    """sbatch lets SBATCH_TIMELIMIT, SBATCH_PARTITION... override a script's #SBATCH lines, not its command line: a
    profile's SBATCH_TIMELIMIT would have outlived the checked --time and its save lead."""
    import megagpt.slurm as slurm
    from launchers.submit import render_pretrain

    script, _ = render_pretrain(job(demo_prefix, tmp_path, partition="gpu", time="1-00:00:00"))
    path = tmp_path / "job.sbatch"
    path.write_text(script.replace("set -euo pipefail", "set -euo pipefail\n#SBATCH --time=9:00"))  # past the body
    given = []
    monkeypatch.setattr(slurm.subprocess, "run", lambda cmd, **kw: given.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0, "17;cluster\n", ""))
    assert slurm.submit_script(str(path), ("--dependency=afterok:16",)) == "17"
    lines = [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]
    assert given == [["sbatch", "--parsable", *lines, "--dependency=afterok:16", str(path)]]
    assert "--time=1-00:00:00" in lines and "--signal=USR1@600" in lines and "--time=9:00" not in lines


def test_a_pythonpath_is_exported_only_where_python_p_would_find_another_megagpt(monkeypatch):
    """An editable install (or site-packages) needs none, and a clone's root put before the standard library could
    shadow it; a plain clone, or another clone's editable install, needs this one's root."""
    import importlib.util

    import megagpt.slurm as slurm

    ours = [importlib.util.find_spec(n).origin for n in slurm._PACKAGES]
    for found, expected in [(ours, ""), (["", "", ""], os.path.dirname(os.path.dirname(ours[0]))),
                            (["/elsewhere/launchers/__init__.py", *ours[1:]], os.path.dirname(os.path.dirname(ours[0])))]:
        slurm.pythonpath_line.cache_clear()
        monkeypatch.setattr(slurm.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
            cmd, 0, "".join(f"{f}\n" for f in found), ""))
        line = slurm.pythonpath_line()
        assert line == (f"export PYTHONPATH={expected}${{PYTHONPATH:+:${{PYTHONPATH}}}}" if expected else "")
    slurm.pythonpath_line.cache_clear()
