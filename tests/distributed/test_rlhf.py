"""The InstructGPT stage end to end on the tiny GPT: reward model, PPO-ptx across role layouts, resume, bad input.

One pipeline is built per session (tests/conftest.py: pretrained_tiny -> sft_tiny -> reward_tiny): pretrain -> SFT
on demonstrations -> reward model on comparisons whose planted preference is "names the keyword more often"
(megagpt.rlhf.demo_data).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from math import isfinite

import pytest

from tests.conftest import CPU_ENV, REPO, kill_tree, megagpt, read_jsonl, start, wait_for_step

pytestmark = pytest.mark.slow
RLHF = os.path.join(REPO, "configs", "rlhf")
SPLIT_8 = "rlhf.layout={actor: {ranks: 2, tp: 2}, critic: {ranks: 2, tp: 1}, reward: {ranks: 2, tp: 2}, " \
          "reference: {ranks: 2, tp: 1}}"
SPLIT_4 = "rlhf.layout={actor: {ranks: 1}, critic: {ranks: 1}, reward: {ranks: 1}, reference: {ranks: 1}}"
# what PPO reports that does not depend on the clock
PPO_KEYS = ("step", "reward", "kl", "kl_coef", "policy_loss", "value_loss", "ptx_loss", "clip_fraction", "approx_kl",
            "entropy", "response_length", "unfinished")


@pytest.fixture(scope="module")
def stage(instruct_data, sft_tiny, reward_tiny, demo_prefix):
    """The session's pretrain -> SFT -> reward model chain (tests/conftest.py), read only: a test that writes
    into one of its run dirs copies it first."""
    return {"sft": sft_tiny, "rm": reward_tiny, "prefix": demo_prefix, **instruct_data}


def ppo_args(stage, run_dir, nproc=1, *overrides):
    return ["ppo", "--config", os.path.join(RLHF, "tiny.yaml"), "--nproc", str(nproc), "rlhf.layout=null",
            f"rlhf.prompts={stage['prompts']}", f"rlhf.actor_init={stage['sft']}",
            f"rlhf.reward_init={stage['rm']}", f"data.prefixes=[{stage['prefix']}]", f"run.dir={run_dir}",
            "run.tensorboard=false", "train.progress=false", "train.save_interval=0", *overrides]


def ppo_record(run_dir) -> list[dict]:
    return [{k: m[k] for k in PPO_KEYS} for m in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]


def test_reward_model_ranks_the_planted_preference(stage):
    rm_dir = stage["rm"]
    report = json.loads((rm_dir / "reward_model.json").read_text())
    assert report["pairwise_accuracy"] > 0.9 and report["held_out_pairs"] == 20 * 6  # 10% of 200, K = 4
    assert abs(report["demonstration_mean_reward"]) < 1e-4  # the shift centres the demonstrations
    evals = read_jsonl(str(rm_dir / "eval.jsonl"))
    assert evals[0]["loss"] == pytest.approx(0.693, abs=0.02)  # log 2: a fresh head ranks at chance
    assert evals[-1]["loss"] < 0.35
    assert (rm_dir / "tokenizer.json").is_file()  # the next stage's tokenizer
    import yaml

    seq = yaml.safe_load((rm_dir / "config.yaml").read_text())["model"]["seq_length"]
    first = read_jsonl(str(rm_dir / "metrics.jsonl"))[0]  # the model reads K = 4 sequences per comparison
    assert first["tokens_per_s"] * first["step_time_s"] == pytest.approx(first["global_batch_size"] * seq * 4)
    assert first["consumed_tokens"] == first["global_batch_size"] * seq  # what the schedule counts


def test_reward_model_losses_match_across_layouts(stage, tmp_path):
    losses = []
    for tp, nproc in ((2, 2), (1, 2), (1, 1)):
        run = tmp_path / f"tp{tp}-n{nproc}"
        megagpt("rm", "--config", os.path.join(RLHF, "rm-tiny.yaml"), "--nproc", str(nproc), f"parallel.tp={tp}",
                "run.tensorboard=false", "train.progress=false", f"rm.data={stage['comparisons']}",
                f"rm.demonstrations={stage['demonstrations']}", f"rm.init={stage['sft']}", f"run.dir={run}",
                "train.steps=5", "train.eval_interval=0")
        losses.append([m["loss"] for m in read_jsonl(str(run / "metrics.jsonl"))])
    for other in losses[1:]:
        assert other == pytest.approx(losses[0], abs=1e-5)


def test_ppo_split_layout_equals_colocated(stage, tmp_path):
    """Actor TP=2, critic DP=2, reward TP=2, reference DP=2 on 8 ranks against one process with all four;
    the split run under the collective audit (every tensor a collective gets is made on the rank's device),
    and with its second iteration profiled on a reward rank."""
    penalty = "rlhf.missing_eos_penalty=0.5"  # applied where r(x, y) arrives; the frozen roles' ranks have none
    megagpt(*ppo_args(stage, tmp_path / "colocated", 1, "train.steps=2", penalty))
    audit = tmp_path / "audit"
    megagpt(*ppo_args(stage, tmp_path / "split", 8, "train.steps=2", SPLIT_8, penalty, "train.profile_steps=[2,2]",
                      "train.profile_ranks=[5]"), env={"MEGAGPT_AUDIT_COLLECTIVES": str(audit)})
    assert sorted(p.name for p in (tmp_path / "split" / "profile").iterdir()) == [
        "rank5-steps2-2.json.gz", "rank5-steps2-2.ops.json", "rank5-steps2-2.txt"]
    assert [m.get("profiled", False) for m in read_jsonl(str(tmp_path / "split" / "metrics.jsonl"))] == [False, True]
    reports = [json.loads(f.read_text()) for f in sorted(audit.glob("rank_*.json"))]
    assert len(reports) == 8 and all(r["calls"].get("broadcast") for r in reports)  # every role got a rollout
    colocated, split = ppo_record(tmp_path / "colocated"), ppo_record(tmp_path / "split")
    assert colocated[0]["kl"] == 0.0  # actor = reference at the first rollout, computed alike
    assert colocated[0]["ptx_loss"] > 0
    for a, b in zip(colocated, split, strict=True):
        for key in PPO_KEYS:
            assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)


def test_responses_cut_at_max_new_tokens_lose_the_missing_eos_penalty(stage, tmp_path):
    """The first iteration's rollouts are the same with and without the penalty (seeded per row): the reward falls
    by the penalty times the share of responses that end without <|endoftext|>."""
    plain, penalised = tmp_path / "plain", tmp_path / "penalised"
    megagpt(*ppo_args(stage, plain, 1, "train.steps=1"))
    megagpt(*ppo_args(stage, penalised, 1, "train.steps=1", "rlhf.missing_eos_penalty=2.0"))
    (a,), (b,) = ppo_record(plain), ppo_record(penalised)
    assert 0 < a["unfinished"] == b["unfinished"] and a["response_length"] == b["response_length"]
    assert b["reward"] == pytest.approx(a["reward"] - 2.0 * a["unfinished"], abs=1e-5)


def test_ppo_raises_the_reward_while_the_kl_stays_bounded(stage, tmp_path):
    from megagpt.rlhf.demo_data import keyword_count

    run = tmp_path / "learn"
    megagpt(*ppo_args(stage, run, 1, "train.steps=30", "rlhf.ptx_coef=0", "optim.lr=3e-4", "rlhf.kl_coef=0.1",
                      "rlhf.log_samples=16"))
    record = ppo_record(run)
    reward = [r["reward"] for r in record]
    # measured: mean reward -1.21 over iterations 1-10, +0.34 over 21-30; KL at most 8.5 (nats per response)
    assert sum(reward[-10:]) / 10 > sum(reward[:10]) / 10 + 0.5
    assert max(r["kl"] for r in record) < 15.0
    samples = read_jsonl(str(run / "samples.jsonl"))
    mentions = {s["step"]: 0 for s in samples}
    for s in samples:
        mentions[s["step"]] += keyword_count(s["response"])
    assert sum(mentions[i] for i in range(21, 31)) > sum(mentions[i] for i in range(1, 11))  # says "file" more


def test_ppo_sigkill_then_resume_equals_an_uninterrupted_run(stage, tmp_path):
    args = ("train.steps=6", SPLIT_4)
    megagpt(*ppo_args(stage, tmp_path / "reference", 4, *args))
    killed = tmp_path / "killed"
    resumable = ppo_args(stage, killed, 4, *args, "train.save_interval=2")
    proc = start(resumable)
    wait_for_step(proc, killed, 3)  # the newest checkpoint is iteration 2; iteration 3 is lost
    kill_tree(proc)
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    out = megagpt(*resumable)
    assert "resumed after iteration 2" in out.stdout
    assert ppo_record(killed) == ppo_record(tmp_path / "reference")  # exact floats
    actor = killed / "checkpoints" / "step_00000006" / "actor"
    completion = megagpt("generate", "--checkpoint", str(actor), "--prompt", "Q: What is a file?\nA:",
                         "--max-new-tokens", "4")  # the PPO run dir's tokenizer, found from its actor
    assert completion.stdout.startswith("Q: What is a file?\nA:")  # the aligned actor is a checkpoint of its own
    whole = megagpt("generate", "--checkpoint", str(actor.parent), "--prompt", "Q:", check=False)
    assert whole.returncode == 2 and whole.stderr.strip().endswith(f"is a PPO checkpoint; read its policy, {actor}")


def test_ppo_signal_saves_and_the_rerun_continues(stage, tmp_path):
    megagpt(*ppo_args(stage, tmp_path / "reference", 1, "train.steps=8"))
    run = tmp_path / "preempted"
    args = ppo_args(stage, run, 1, "train.steps=8")
    proc = start(args)
    wait_for_step(proc, run, 2)
    os.kill(proc.pid, signal.SIGUSR1)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "signal SIGUSR1 received" in output, output[-3000:]
    assert (run / "PREEMPTED").exists()
    megagpt(*args)
    assert ppo_record(run) == ppo_record(tmp_path / "reference")


def test_a_ppo_resume_that_reorders_the_ptx_samples_says_so(stage, tmp_path):
    """The ptx term's dataset is built for the run's samples: raising train.steps reordered them without a word
    (pretraining warned). And the run's critic, a value function, is no reward model (it was taken for one)."""
    run = tmp_path / "run"
    megagpt(*ppo_args(stage, run, 1, "train.steps=2", "train.save_interval=2"))
    assert json.loads((run / "data_epochs.json").read_text())
    critic = run / "checkpoints" / "step_00000002" / "critic"
    proc = megagpt(*ppo_args(stage, tmp_path / "other", 1, f"rlhf.reward_init={critic}"), check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().endswith(
        f"rlhf.reward_init: checkpoint {critic} is a PPO run's critic, a value function that scores every prefix, "
        f"not a reward model; give a `megagpt rm` run"), proc.stderr
    out = megagpt(*ppo_args(stage, run, 1, "train.steps=400", "train.exit_duration_minutes=1e-4",
                            "rlhf.log_samples=3"))  # logging may change at a resume (it was refused)
    assert "resumed after iteration 2" in out.stdout
    assert "megagpt: warning: this resume builds the training split over other numbers of epochs" in out.stderr


def test_the_critic_starts_as_the_reward_model(stage):
    script = f"""
import torch
from megagpt.config import load_config
from megagpt.parallel.distributed import init_distributed
from megagpt.rlhf.layout import RoleGroups, parse_layout
from megagpt.rlhf.roles import build_role
cfg = load_config({os.path.join(RLHF, 'tiny.yaml')!r}, ["rlhf.layout=null",
      "rlhf.actor_init={stage['sft']}", "rlhf.reward_init={stage['rm']}"])
device = init_distributed("cpu")
groups = RoleGroups(parse_layout(cfg, 1))
critic, reward = (build_role(cfg, r, groups.context(r, device)) for r in ("critic", "reward"))
frozen = dict(reward.module.named_parameters())
assert all(torch.equal(p, frozen[n]) for n, p in critic.module.named_parameters()), "critic != reward model"
assert torch.equal(critic.module.value_head.weight, reward.module.value_head.weight)
assert not any(p.requires_grad for p in reward.module.parameters()) and reward.engine is None
print("ok", len(frozen))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, **CPU_ENV}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.splitlines()[-1].startswith("ok"), out.stderr[-3000:]


def test_bad_ppo_input_is_one_line_before_any_process(stage, tmp_path):
    def error(*overrides, nproc=1):
        proc = megagpt(*ppo_args(stage, tmp_path / "run", nproc, *overrides), check=False, timeout=120)
        assert proc.returncode == 2, proc.stderr
        return proc.stderr.strip().splitlines()[-1]

    assert "gives 2 + 2 + 2 + 2 = 8 ranks to the roles, but the world has 4" in error(SPLIT_8, nproc=4)
    assert "model.seq_length=128, which prompt + response and the ptx samples fill, is longer than the actor's " \
           "context 64" in error("model.seq_length=128")
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": 5}\nnot json\n')
    assert error(f"rlhf.prompts={bad}").endswith(
        f'{bad}: 2 malformed lines (line 2: needs a string field "prompt"; line 3: not JSON)')
    other = tmp_path / "rm-other-tokenizer"
    shutil.copytree(stage["rm"], other)
    from megagpt.data.tokenizer import Tokenizer

    Tokenizer.train(["some other text entirely, to learn other merges"] * 20, 300).save(str(other / "tokenizer.json"))
    assert "rlhf.reward_init's tokenizer" in error(f"rlhf.reward_init={other}")
    assert "differs from the actor's" in error(f"rlhf.reward_init={other}")


def test_a_tokenizer_larger_than_the_model_is_one_line_for_sft_and_rm(stage, tmp_path):
    """Its ids past the embeddings crashed every rank with an IndexError."""
    from tokenizers import Tokenizer as HFTokenizer

    big = HFTokenizer.from_file(str(stage["sft"] / "tokenizer.json"))
    big.add_special_tokens(["<|sep|>"])
    big.save(str(tmp_path / "big.json"))
    for command in (["sft", "--config", os.path.join(RLHF, "sft-tiny.yaml"), f"sft.data={stage['demonstrations']}",
                     f"sft.init={stage['sft']}", f"sft.tokenizer={tmp_path / 'big.json'}"],
                    ["rm", "--config", os.path.join(RLHF, "rm-tiny.yaml"), f"rm.data={stage['comparisons']}",
                     f"rm.demonstrations={stage['demonstrations']}", f"rm.init={stage['sft']}",
                     f"rm.tokenizer={tmp_path / 'big.json'}"]):
        proc = megagpt(*command, "--nproc", "1", "parallel.tp=1", "parallel.pp=1", f"run.dir={tmp_path / command[0]}",
                       check=False, timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
            f"megagpt: error: tokenizer {tmp_path / 'big.json'} has 4097 tokens but checkpoint "), proc.stderr


def test_ppo_resumes_at_another_role_layout(stage, tmp_path):
    """Saved colocated in one process at iteration 2, continued split over 4 ranks: the same iterations 3-4."""
    reference, run = tmp_path / "reference", tmp_path / "run"
    megagpt(*ppo_args(stage, reference, 1, "train.steps=4"))
    megagpt(*ppo_args(stage, run, 1, "train.steps=2", "train.save_interval=2"))
    out = megagpt(*ppo_args(stage, run, 4, "train.steps=4", SPLIT_4))
    assert "resumed after iteration 2" in out.stdout
    for a, b in zip(ppo_record(reference), ppo_record(run), strict=True):
        for key in PPO_KEYS:
            assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)


def test_a_resumed_ppo_run_reads_the_reward_model_and_prompts_it_started_with(stage, tmp_path):
    """The frozen models are read afresh at each start: a reward-model run trained further (its `latest` moved)
    or prompts edited in place would continue the run against another reward, or other prompts."""
    rm, prompts, run = tmp_path / "rm", tmp_path / "prompts.jsonl", tmp_path / "run"
    shutil.copytree(stage["rm"], rm)
    shutil.copy(stage["prompts"], prompts)
    args = ppo_args(stage, run, 1, f"rlhf.reward_init={rm}", f"rlhf.prompts={prompts}", "train.save_interval=1")
    megagpt(*args, "train.steps=1")

    def refused():
        proc = megagpt(*args, "train.steps=2", check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        return proc.stderr.strip().splitlines()[-1]

    started = (rm / "checkpoints" / "latest").read_text().strip()
    further = rm / "checkpoints" / "step_00000999"  # as if the RM run trained on
    shutil.copytree(rm / "checkpoints" / started, further)
    meta = json.loads((further / "megagpt.json").read_text())
    (further / "megagpt.json").write_text(json.dumps({**meta, "step": 999}))
    (rm / "checkpoints" / "latest").write_text("step_00000999\n")
    assert f"rlhf.reward_init now names checkpoint {further}, not the one the run started from " \
           f"({rm / 'checkpoints' / started}: give that one)" in refused()
    (rm / "checkpoints" / "latest").write_text(started + "\n")
    prompts.write_text(prompts.read_text() + '{"prompt": "one more"}\n')
    assert "rlhf.prompts's contents changed since checkpoint" in refused()
    shutil.copy(stage["prompts"], prompts)
    assert "resumed after iteration 1" in megagpt(*args, "train.steps=2").stdout
    again = megagpt(*args, "train.steps=2").stdout  # a rerun of the finished run said only "resumed after"
    assert f"megagpt ppo: {run} has trained 2 iterations already, train.steps=2 (raise train.steps to continue " \
           f"it)" in again


def test_a_diverged_ppo_run_stops_at_the_iteration(stage, tmp_path):
    run = tmp_path / "diverged"
    proc = megagpt(*ppo_args(stage, run, 1, "train.steps=3", "optim.lr=1e30", "optim.warmup_tokens=0"), check=False)
    assert proc.returncode == 2  # one process: the command ran in the launcher's own
    line = next(line for line in proc.stderr.splitlines() if line.startswith("megagpt: error: PPO iteration"))
    assert "the run diverged" in line and line.endswith("the last checkpoint is none: nothing was saved")
    records = read_jsonl(str(run / "metrics.jsonl"))
    assert all(isfinite(r["actor_grad_norm"]) and isfinite(r["critic_grad_norm"]) for r in records[:-1])


def test_what_the_stages_read_is_checked(stage, tmp_path):
    def error(*args):
        proc = megagpt(*args, check=False, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        return proc.stderr.strip().splitlines()[-1]

    # a stage's input left unset is named, not a traceback or another key's complaint
    assert error(*ppo_args(stage, tmp_path / "p", 1, "rlhf.prompts=null")) == \
        "megagpt: error: rlhf.prompts is not set: megagpt ppo trains on prompts"
    assert error("sft", "--config", os.path.join(RLHF, "sft-tiny.yaml"), f"run.dir={tmp_path / 's'}") == \
        "megagpt: error: sft.data is not set: megagpt sft trains on demonstrations"
    # a reward model is not read as a language model without its head
    assert "holds value_head.weight, a head a language model has no place for" in error(
        "export-hf", "--checkpoint", str(stage["rm"]), "--out", str(tmp_path / "hf"))
    assert "generate: checkpoint" in error("generate", "--checkpoint", str(stage["rm"]), "--prompt", "Q:")
    (tmp_path / "held.txt").write_text("A file holds text. " * 40)
    assert "eval: checkpoint" in error("eval", "perplexity", "--checkpoint", str(stage["rm"]), "--data",
                                       str(tmp_path / "held.txt"))
    assert "sft.init: checkpoint" in error("sft", "--config", os.path.join(RLHF, "sft-tiny.yaml"),
                                           "parallel.tp=1", "parallel.pp=1", f"sft.data={stage['demonstrations']}",
                                           f"sft.init={stage['rm']}",
                                           f"run.dir={tmp_path / 's2'}")
    assert "rlhf.actor_init: checkpoint" in error(*ppo_args(stage, tmp_path / "p2", 1, f"rlhf.actor_init={stage['rm']}"))
    assert not (tmp_path / "s2").exists()  # refused before anything is written
    # settings PPO has no use for were run without a word: the policy is the actor_init's model, and no held-out loss
    assert error(*ppo_args(stage, tmp_path / "p4", 1, "model.hidden_size=128")).endswith(
        "names another shape: model.hidden_size=128 (it has 64), model.ffn_size=512 (it has 256); set model.* to the "
        "policy's")
    assert "train.eval_interval=1: PPO has no held-out loss" in error(*ppo_args(stage, tmp_path / "p5", 1,
                                                                                   "train.eval_interval=1"))
    # and the reward model is one: a language model there has no value head to start the critic from
    assert error(*ppo_args(stage, tmp_path / "p3", 1, f"rlhf.reward_init={stage['sft']}")).endswith(
        "is a language model, not a reward model (no value_head); train one with `megagpt rm`")
    # a stage starting from its own run.dir would take the init for its own checkpoint, or set it aside
    own = tmp_path / "own"
    shutil.copytree(stage["sft"], own)
    before = sorted(os.listdir(own / "checkpoints"))
    assert error("sft", "--config", os.path.join(RLHF, "sft-tiny.yaml"), "parallel.tp=1", "parallel.pp=1",
                 f"sft.data={stage['demonstrations']}", f"sft.init={own}", f"run.dir={own}", "train.resume=false") == \
        f"megagpt: error: sft.init={own} is a checkpoint of run.dir={own}, which this stage writes to; " \
        f"give the stage a run.dir of its own"
    assert sorted(os.listdir(own / "checkpoints")) == before
    # an SFT run keeps its tokenizer in run.dir, where export-hf finds it
    megagpt("export-hf", "--checkpoint", str(stage["sft"]), "--out", str(tmp_path / "hf-sft"))
    # comparisons too long for the context are counted and left out, said once
    rows = [json.loads(line) for line in open(stage["comparisons"])]
    rows[0]["responses"][0] = " file" * 400
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = megagpt("rm", "--config", os.path.join(RLHF, "rm-tiny.yaml"), "--nproc", "2", "run.tensorboard=false",
                  "train.progress=false", f"rm.data={tmp_path / 'long.jsonl'}",
                  f"rm.demonstrations={stage['demonstrations']}", f"rm.init={stage['sft']}", f"run.dir={tmp_path / 'rm'}",
                  "train.steps=2", "train.eval_interval=0").stdout
    assert out.count("megagpt rm: left out 1 comparisons with a response longer than model.seq_length=64") == 1
