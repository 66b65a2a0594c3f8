"""The InstructGPT stage's math against hand computation: the K-wise ranking loss, GAE, PPO's losses, beta."""

import json
import math

import pytest
import torch

from megagpt.errors import ConfigError, DataError
from megagpt.rlhf import ppo
from megagpt.rlhf.data import read_comparisons, read_prompts
from megagpt.rlhf.reward import rm_loss
from megagpt.rlhf.rollout import row_seed, shuffle_seed


def test_rm_loss_for_k4_equals_the_hand_computed_value():
    rewards = [2.0, 0.5, 1.0, -1.0]  # of responses ranked best first
    values = torch.zeros(1, 4, 6)
    last = torch.tensor([[5, 3, 4, 2]])  # each response's final token
    for k, r in enumerate(rewards):
        values[0, k, last[0, k]] = r
    pairs = [(w, l) for w in range(4) for l in range(w + 1, 4)]  # C(4, 2) = 6
    expected = -sum(math.log(1 / (1 + math.exp(-(rewards[w] - rewards[l])))) for w, l in pairs) / 6
    loss = rm_loss(values, (last, torch.ones(1, 4)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_rm_loss_ignores_padding_responses_and_averages_prompts():
    values = torch.zeros(2, 3, 4)
    values[0, 0, 3], values[0, 1, 3] = 1.0, 0.0  # K = 2, third row is padding
    values[1, :, 3] = torch.tensor([0.0, 0.0, 0.0])  # K = 3, all tied: log 2 per pair
    present = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss = rm_loss(values, (torch.full((2, 3), 3), present))
    first = -math.log(1 / (1 + math.exp(-1.0)))
    assert loss.item() == pytest.approx((first + math.log(2)) / 2, rel=1e-6)


def test_kl_is_exactly_zero_when_the_actor_is_the_reference():
    logp = torch.randn(3, 7)
    mask = ppo.action_mask(torch.tensor([2, 3, 1]), torch.tensor([3, 2, 4]), 8)
    rewards, kl = ppo.token_rewards(torch.tensor([1.0, 2.0, 3.0]), logp, logp.clone(), mask,
                                    ppo.last_action(torch.tensor([2, 3, 1]), torch.tensor([3, 2, 4])), 0.02)
    assert torch.equal(kl, torch.zeros_like(kl))
    assert rewards.sum(dim=1).tolist() == [1.0, 2.0, 3.0]  # only r(x, y), at the last action


def test_actions_and_per_token_rewards_sit_on_the_response():
    prompt_len, response_len = torch.tensor([3]), torch.tensor([2])
    mask = ppo.action_mask(prompt_len, response_len, 7)
    assert mask.tolist() == [[0, 0, 1, 1, 0, 0]]  # actions 2, 3 emit tokens 3, 4
    last = ppo.last_action(prompt_len, response_len)
    assert last.tolist() == [3]
    logp_old, logp_ref = torch.zeros(1, 6), torch.zeros(1, 6)
    logp_old[0, 2], logp_old[0, 3] = -1.0, -2.0
    logp_ref[0, 2], logp_ref[0, 3] = -1.5, -1.0
    rewards, kl = ppo.token_rewards(torch.tensor([0.7]), logp_old, logp_ref, mask, last, kl_coef=0.1)
    assert kl[0].tolist() == pytest.approx([0, 0, 0.5, -1.0, 0, 0])
    assert rewards[0].tolist() == pytest.approx([0, 0, -0.05, 0.1 + 0.7, 0, 0])


def test_gae_matches_the_recursion_by_hand():
    rewards = torch.tensor([[0.0, 1.0, 0.5, 2.0, 9.0]])
    values = torch.tensor([[0.0, 0.3, 0.2, 0.4, 9.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    d3 = 2.0 - 0.4  # the last action: no value after it
    d2 = 0.5 + gamma * 0.4 - 0.2
    d1 = 1.0 + gamma * 0.2 - 0.3
    a3, a2 = d3, d2 + gamma * lam * d3
    a1 = d1 + gamma * lam * a2
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    assert adv[0].tolist() == pytest.approx([0, a1, a2, a3, 0])
    assert ret[0].tolist() == pytest.approx([0, a1 + 0.3, a2 + 0.2, a3 + 0.4, 0])


def test_policy_loss_clips_and_counts_the_clipped_share():
    logp_old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    out = ppo.policy_loss(logp, logp_old, adv, torch.ones(1, 4), clip=0.2)
    # per action: max(-A r, -A clip(r)): -1, -1.2 (clipped), 0.8 (clipped), 1.1
    assert out.loss.item() == pytest.approx((-1.0 - 1.2 + 0.8 + 1.1) / 4)
    assert out.clip_fraction.item() == pytest.approx(0.5)


def test_value_loss_is_clipped_around_the_rollout_values():
    loss = ppo.value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.5 * 0.8 ** 2)  # the clipped value 0.2 is 0.8 from the return


def test_gamma_zero_drops_the_ptx_term():
    policy, ptx = torch.tensor(0.3), torch.tensor(5.0)
    assert ppo.actor_loss(policy, ptx, 0.0) is policy
    assert ppo.actor_loss(policy, ptx, 27.8).item() == pytest.approx(0.3 + 27.8 * 5.0)


@pytest.mark.parametrize("seed", [0, 1234, 2**62])
def test_the_mini_batch_shuffle_never_reuses_a_rollout_rows_seed(seed):
    """Seeded in one arithmetic domain, the shuffle of (iteration, epoch) drew row epoch - 3's stream of
    iteration + 1 once rlhf.ppo_epochs >= 4."""
    shuffles = {shuffle_seed(seed, i, e) for i in range(1, 4) for e in range(8)}
    rows = {row_seed(seed, i, r) for i in range(1, 5) for r in range(64)}
    assert len(shuffles) == 3 * 8 and len(rows) == 4 * 64
    assert shuffles.isdisjoint(rows)
    assert all(0 <= s < 2**63 for s in shuffles | rows)  # torch.Generator.manual_seed takes them as they are


def test_adaptive_beta_moves_towards_the_target_and_fixed_beta_stays():
    fixed = ppo.KLController(0.02, None, 100)
    fixed.update(50.0, 16)
    assert fixed.value == 0.02
    adaptive = ppo.KLController(0.1, 6.0, 100)
    adaptive.update(12.0, 50)  # error clipped to +0.2
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 50 / 100))
    adaptive.update(5.4, 100)
    assert adaptive.value == pytest.approx(0.11 * (1 - 0.1))


def test_bad_comparison_and_prompt_lines_are_counted_with_their_numbers(tmp_path):
    good = {"prompt": "p", "responses": ["a", "b"]}
    lines = [good, "{not json", {"prompt": "p", "responses": ["only one"]}, good,
             {"prompt": "p", "responses": ["a", "a"]}, {"prompt": 3, "responses": ["a", "b"]}]
    path = tmp_path / "comparisons.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    with pytest.raises(DataError) as err:
        read_comparisons(str(path))
    message = str(err.value)
    assert "4 malformed lines" in message
    for expected in ("line 2: not JSON", "line 3: has 1 responses", "line 5: ranks the same response twice",
                     'line 6: needs a string field "prompt"'):
        assert expected in message
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a"}\n\n["x"]\n')
    with pytest.raises(DataError, match=r"1 malformed line \(line 3: not a JSON object\)"):
        read_prompts(str(prompts))
    prompts.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        read_prompts(str(prompts))


def test_repeated_comparisons_are_named_before_the_reward_model_trains(tmp_path, capsys):
    """A held-out comparison that is also a trained one flatters the pairwise accuracy (0.604 on pairs it had seen)."""
    from megagpt.config import load_config
    from megagpt.errors import MegagptError
    from megagpt.rlhf.reward import preflight_rm

    rows = [{"prompt": f"p{i}", "responses": ["a", "b"]} for i in range(3)] * 2 + [{"prompt": "p0",
                                                                                 "responses": ["b", "a"]}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    cfg = load_config(None, [f"rm.data={tmp_path / 'c.jsonl'}", f"rm.demonstrations={tmp_path / 'd.jsonl'}",
                             f"rm.init={tmp_path / 'none'}", f"run.dir={tmp_path / 'run'}"])
    with pytest.raises(MegagptError):  # no init checkpoint: after the files are read
        preflight_rm(cfg)
    assert (f"megagpt rm: warning: 3 of the 7 comparisons in {tmp_path / 'c.jsonl'} repeat an earlier one"
            in capsys.readouterr().err)


def test_role_layout_must_add_up_to_the_world():
    from megagpt.config import load_config
    from megagpt.rlhf.layout import parse_layout

    def layout(ranks, tp=(1, 1, 1, 1), world=8):
        roles = ("actor", "critic", "reward", "reference")
        spec = ", ".join(f"{r}: {{ranks: {n}, tp: {t}}}" for r, n, t in zip(roles, ranks, tp))
        cfg = load_config(None, ["model.num_layers=2", "model.hidden_size=32", "model.num_heads=4",
                                 "model.vocab_size=100", "rlhf.rollout_batch_size=8", "rlhf.micro_batch_size=2",
                                 f"rlhf.layout={{{spec}}}"])
        return parse_layout(cfg, world)

    specs = layout((2, 2, 2, 2), (2, 1, 2, 1))
    assert specs["critic"].ranks == (2, 3) and specs["critic"].dp == 2 and specs["reference"].leader == 6
    with pytest.raises(ConfigError, match=r"gives 2 \+ 2 \+ 2 \+ 1 = 7 ranks to the roles, but the world has 8"):
        layout((2, 2, 2, 1))
    with pytest.raises(ConfigError, match="rlhf.layout.actor: tp=3 must divide the role's 2 ranks"):
        layout((2, 2, 2, 2), (3, 1, 1, 1))
    with pytest.raises(ConfigError, match=r"rollout_batch_size=8 / rlhf.mini_batches=1 must be a multiple of "
                                          r"rlhf.micro_batch_size\*dp=2\*8 \(the critic's\)"):
        layout((1, 8, 1, 1), world=11)


def test_prompts_left_out_are_counted_with_their_reason(tmp_path):
    from megagpt.config import load_config
    from megagpt.rlhf.trainer import tokenized_prompts

    class Words:  # one id per word
        def encode(self, text):
            return [len(w) for w in text.split()]

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a b", "", "a b c d e f g", "a b", "  "]))
    cfg = load_config(None, ["model.seq_length=8", "rlhf.max_new_tokens=4", f"rlhf.prompts={path}"])
    kept, left_out = tokenized_prompts(cfg, Words())
    assert kept == [[1, 1], [1, 1]]  # the same prompt twice is two rollouts, as the file says
    assert left_out == "2 empty, 1 too long"
    path.write_text(json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(DataError, match="no usable prompt \\(1 empty, 0 longer than model.seq_length=8"):
        tokenized_prompts(cfg, Words())


def test_ppo_roles_run_without_dropout_and_score_at_the_sampling_temperature(tmp_path):
    """With the gpt2 presets' dropout the actor's log pi_old and the critic's values were noisy draws (KL to an
    identical reference -0.056 per sequence before any update), and a rollout sampled at temperature T was
    scored at temperature 1."""
    from types import SimpleNamespace

    from megagpt.config import load_config
    from megagpt.rlhf.roles import Role, policy_logprobs, role_config

    cfg = load_config("configs/rlhf/tiny.yaml", ["model.hidden_dropout=0.1", "model.attention_dropout=0.1",
                                                 "rlhf.temperature=0.7"])
    pc = SimpleNamespace(tp=1, tp_group=None)
    for name in ("actor", "critic", "reward", "reference"):
        model = role_config(cfg, name, pc).model
        assert (model.hidden_dropout, model.attention_dropout) == (0.0, 0.0), name
    logits = torch.randn(2, 5, cfg.model.padded_vocab_size)
    logits[..., cfg.model.vocab_size:] = 0.0  # padding rows, which hold no probability
    tokens = torch.randint(cfg.model.vocab_size, (2, 5))
    role = Role("actor", pc, lambda t: logits, role_config(cfg, "actor", pc))
    expected = torch.log_softmax(logits[:, :-1, :cfg.model.vocab_size] / 0.7, dim=-1).gather(
        -1, tokens[:, 1:, None])[..., 0]
    assert torch.allclose(policy_logprobs(role, tokens), expected, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["rlhf.temperature=0"], "rlhf.temperature=0.0 must be positive"),
    (["rlhf.top_k=5"], "rlhf.top_k=5, rlhf.top_p=1.0: PPO samples with no top-k or top-p cut"),
    (["rlhf.top_p=0.9"], "rlhf.top_k=0, rlhf.top_p=0.9: PPO samples"),
    (["rlhf.missing_eos_penalty=-1"], "rlhf.missing_eos_penalty=-1.0 must be >= 0"),
])
def test_ppo_sampling_settings_that_would_score_another_policy_are_refused(overrides, message):
    from megagpt.config import load_config, validate_rlhf

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate_rlhf(load_config("configs/rlhf/tiny.yaml", overrides))


def test_ppo_phase_marks_wait_for_the_device(monkeypatch):
    """On CUDA the host runs ahead of the kernels and collectives it queued: a phase's mark taken at its last launch
    put its GPU time into the next phase's (scoring's into training's)."""
    import torch

    from megagpt.rlhf.trainer import _now

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", waited.append)
    _now(torch.device("cpu"))
    _now(torch.device("cuda", 1))
    assert waited == [torch.device("cuda", 1)]
