import dataclasses
import os
import re

import pytest

from megagpt.config import ConfigError, load_config, parse_override, validate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "demo", "tiny.yaml")
PRESETS = sorted(f[:-5] for f in os.listdir(os.path.join(REPO, "configs", "model")))


def tiny(*overrides):
    return load_config(TINY, list(overrides))


def test_yaml_and_dotted_overrides():
    cfg = tiny("parallel.tp=1", "optim.lr=1e-3", "data.prefixes=[a, b]", "model.norm_position=post")
    assert cfg.model.num_layers == 4 and cfg.parallel.tp == 1 and cfg.optim.lr == 1e-3
    assert cfg.data.prefixes == ["a", "b"] and cfg.model.norm_position == "post"


def test_base_files_merge_in_order(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(f"base: {os.path.join(REPO, 'configs/model/gpt3-small.yaml')}\nparallel: {{tp: 4}}\n"
                   "model: {seq_length: 1024}\n")
    cfg = load_config(str(run))
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.seq_length) == (12, 768, 1024)
    assert cfg.parallel.tp == 4 and cfg.optim.beta2 == 0.95


@pytest.mark.parametrize("text, message", [
    (b"model:\n  num_layers: 2\n  num_layers: 3\n", "key 'num_layers' given twice"),  # the last one won silently
    (b"\xff\xfe", "is not UTF-8 text (byte 0"),  # a UnicodeDecodeError traceback
    (b"base: missing.yaml\n", "base 'missing.yaml' not found"),  # named the base, not the file that asked for it
])
def test_a_config_file_that_cannot_be_read_as_written_is_one_line(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_config(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_an_empty_run_dir_is_refused():
    with pytest.raises(ConfigError, match=re.escape("run.dir='' is empty")):  # os.makedirs('') failed in training
        validate(tiny("run.dir="), world_size=4, check_data=False)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_validate(preset):
    cfg = load_config(os.path.join(REPO, "configs", "model", f"{preset}.yaml"),
                      ["train.micro_batch_size=1", "train.batch_ramp_start=null"])
    validate(cfg, world_size=1, check_data=False)


@pytest.mark.parametrize("item,message", [
    ("model.num_layerz=3", "unknown config key model.num_layerz=3"),
    ("modle.num_layers=3", "unknown config section 'modle'"),
    ("model.num_layers=abc", "model.num_layers='abc' is not a valid int"),
    ("model.num_layers", "malformed override 'model.num_layers': expected section.key=value"),
    ("model.num_layers=[1", "malformed override 'model.num_layers=[1'"),
    ("optim.lr=fast", "optim.lr='fast' is not a valid float"),
    ("train.progress=3", "train.progress=3 is not a valid bool"),
    ("data.prefixes=[true, 2]", "data.prefixes[0]=True is not a valid str"),  # was a TypeError traceback at validate
    ("data.weights=[true]", "data.weights[0]=True is not a valid float"),
    ("train.profile_steps=[1, 2.5]", "train.profile_steps[1]=2.5 is not a valid int"),
])
def test_bad_keys_and_values_are_named(item, message):
    with pytest.raises(ConfigError) as err:
        tiny(item)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=1.5") == ("a.b", 1.5)
    assert parse_override("a.b=[x, 2]") == ("a.b", ["x", 2])
    assert parse_override("a.b=null") == ("a.b", None)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    bad.write_text("base: 5\n")
    with pytest.raises(ConfigError, match="base=5 must be a file or a list of files"):
        load_config(str(bad))
    (tmp_path / "sub").mkdir()
    bad.write_text("base: [sub]\n")
    with pytest.raises(ConfigError, match="base 'sub' is a directory, not a config file"):
        load_config(str(bad))


def test_a_section_given_whole_on_the_command_line_sets_its_keys():
    cfg = load_config(TINY, ["train={steps: 2}"])
    base = load_config(TINY)
    assert cfg.train.steps == 2 and cfg.train.global_batch_size == base.train.global_batch_size


RULES = [
    (["parallel.tp=3"], 8 * 3 // 2, "parallel.tp=3 must divide model.num_heads=4"),
    (["model.hidden_size=66"], 8, "model.num_heads=4 must divide model.hidden_size=66"),
    (["parallel.pp=3"], 6, "parallel.pp=3 must divide model.num_layers=4"),
    ([], 6, "world size 6 must be a multiple of parallel.tp*parallel.pp=2*2"),
    (["train.global_batch_size=6"], 8, "train.global_batch_size=6 must be a multiple of train.micro_batch_size*dp=2*2"),
    (["parallel.tp=4", "model.num_heads=8", "model.vocab_size=102", "model.make_vocab_size_divisible_by=2"], 8,
     "parallel.tp=4 must divide the padded vocab 102"),
    (["parallel.zero_stage=2"], 8, "parallel.zero_stage=2 needs parallel.pp=1"),
    (["parallel.zero_stage=4"], 8, "parallel.zero_stage=4 must be 0, 1, 2 or 3"),
    (["train.precision=fp16", "parallel.grad_reduce_in_fp32=true"], 8,
     "parallel.grad_reduce_in_fp32=true applies to bf16 runs"),
    (["parallel.zero_stage=0", "parallel.offload_optimizer=true"], 8,
     "parallel.offload_optimizer=true needs parallel.zero_stage 1, 2 or 3"),
    (["parallel.zero_stage=0", "train.precision=fp16"], 8, "parallel.zero_stage=0 with train.precision=fp16 is not"),
    (["parallel.zero_stage=0", "train.precision=bf16", "train.universal_checkpoint=false"], 8,
     "parallel.zero_stage=0 with parallel.pp > 1 and train.precision=bf16 needs train.universal_checkpoint=true"),
    (["train.batch_ramp_start=6", "train.batch_ramp_increment=4"], 8, "train.batch_ramp_start=6 must be a positive multiple"),
    (["train.batch_ramp_start=8", "train.batch_ramp_increment=12"], 8,
     "train.global_batch_size=16 must be train.batch_ramp_start=8 plus a whole number"),
    (["train.eval_samples=6"], 8, "train.eval_samples=6 must be a positive multiple"),
    (["train.precision=fp8"], 8, "train.precision='fp8' must be fp32, bf16 or fp16"),
    (["model.norm_position=middle"], 8, "model.norm_position='middle' must be 'pre' or 'post'"),
    (["model.attention=sparse"], 8, "model.attention='sparse' must be 'dense' or 'alternating'"),
    (["model.sparse_pattern=dense"], 8, "model.sparse_pattern='dense' must be 'local' or 'strided'"),
    (["train.exit_duration_minutes=0"], 8, "train.exit_duration_minutes=0.0 must be a positive number of minutes"),
    (["train.exit_duration_minutes=soon"], 8, "train.exit_duration_minutes='soon' is not a valid float"),
    (["train.profile_steps=[3,2]"], 8, "train.profile_steps=[3, 2] must be [first, last] with 1 <= first <= last"),
    (["train.profile_steps=[1,2,3]"], 8, "train.profile_steps=[1, 2, 3] must be [first, last]"),
    (["train.profile_steps=[1,x]"], 8, "train.profile_steps[1]='x' is not a valid int"),
    (["train.profile_steps=[1,2]", "train.profile_ranks=[8]"], 8,
     "train.profile_ranks=[8] must name ranks of this world (0..7)"),
    (["run.device=tpu"], 8, "run.device='tpu' must be auto, cpu or cuda"),
    (["optim.eps=-1"], 8, "optim.eps=-1.0 must be positive and finite"),
    (["optim.beta1=1.5"], 8, "optim.beta1=1.5 must lie in [0, 1)"),
    (["optim.beta2=1"], 8, "optim.beta2=1.0 must lie in [0, 1)"),
    (["optim.weight_decay=-5"], 8, "optim.weight_decay=-5.0 must be >= 0 and finite"),
    (["model.init_std=-1"], 8, "model.init_std=-1.0 must be positive and finite"),
    (["model.position_init_std=nan"], 8, "model.position_init_std=nan must be positive and finite"),
    (["model.layernorm_epsilon=0"], 8, "model.layernorm_epsilon=0.0 must be positive and finite"),
    (["optim.lr=.inf"], 8, "optim.lr=inf must be positive and finite"),
    (["optim.warmup_tokens=2000", "optim.decay_tokens=1000"], 8,
     "optim.decay_tokens=1000 must exceed optim.warmup_tokens=2000"),
    (["train.steps=0"], 8, "train.steps=0 must be at least 1"),
    (["data.split=90,10"], 8, "data.split='90,10' must be three comma-separated numbers"),
    (["parallel.tp=1", "parallel.sequence_parallel=true"], 4, "parallel.sequence_parallel=true needs parallel.tp > 1"),
    (["parallel.sequence_parallel=true", "model.seq_length=63"], 8,
     "parallel.sequence_parallel=true needs parallel.tp=2 to divide model.seq_length=63"),
    # each of these crashed every rank with a traceback, or (0) was taken as the default
    (["model.ffn_hidden_size=-4"], 8, "model.ffn_hidden_size=-4 must be at least 1 (null: 4 x model.hidden_size)"),
    (["model.ffn_hidden_size=0"], 8, "model.ffn_hidden_size=0 must be at least 1"),
    (["train.seed=-1"], 8, "train.seed=-1 must lie in [0, 2**32)"),
    (["train.eval_interval=-5"], 8, "train.eval_interval=-5 must be >= 0 (0: no held-out evaluation)"),
    (["train.batch_ramp_tokens=-1"], 8, "train.batch_ramp_tokens=-1 must be >= 0 (0: no ramp)"),
    (["rlhf.prompts=p.jsonl", "parallel.pp=1", "rlhf.critic_lr=-1"], 8,
     "rlhf.critic_lr=-1.0 must be positive and finite (null: optim.lr)"),
    # PPO ran at a constant lr whatever these said, and a change to them refused the resume
    (["rlhf.prompts=p.jsonl", "parallel.pp=1", "optim.warmup_tokens=1000"], 8,
     "optim.warmup_tokens=1000, optim.decay_tokens=None: PPO trains at a constant learning rate"),
    (["rlhf.prompts=p.jsonl", "parallel.pp=1", "optim.warmup_tokens=0", "optim.decay_tokens=5000"], 8,
     "optim.decay_tokens=5000: PPO trains at a constant learning rate"),
]


@pytest.mark.parametrize("overrides,world,message", RULES, ids=[r[2][:40] for r in RULES])
def test_validate_rejects_impossible_runs(overrides, world, message):
    with pytest.raises(ConfigError) as err:
        validate(tiny(*overrides), world, check_data=False)
    assert message in str(err.value)


@pytest.mark.parametrize("overrides", [["parallel.pp=1"], ["parallel.pp=2"], ["parallel.pp=2", "train.precision=bf16"]])
def test_zero_0_is_plain_data_parallelism(overrides):
    validate(tiny("parallel.zero_stage=0", *overrides), 8, check_data=False)


def test_validate_checks_data_paths(tmp_path):
    with pytest.raises(ConfigError, match=r"data.prefixes=\[\] is empty"):
        validate(tiny(), 8)
    with pytest.raises(ConfigError, match=r"data.prefixes\[0\]='/no/such': /no/such.bin not found"):
        validate(tiny("data.prefixes=[/no/such]"), 8)
    for ext in (".bin", ".idx"):
        (tmp_path / f"s{ext}").write_bytes(b"")
    validate(tiny(f"data.prefixes=[{tmp_path}/s]"), 8)
    with pytest.raises(ConfigError, match="data.weights has 2 entries but data.prefixes has 1"):
        validate(tiny(f"data.prefixes=[{tmp_path}/s]", "data.weights=[1, 2]"), 8)
    with pytest.raises(ConfigError, match=re.escape(f"data.prefixes[1]='{tmp_path}/./s' names the shard of "
                                                    f"data.prefixes[0] again")):
        validate(tiny(f"data.prefixes=[{tmp_path}/s, {tmp_path}/./s]"), 8)
    assert tiny("optim.warmup_tokens=375e6").optim.warmup_tokens == 375_000_000  # YAML 1.1 reads 375e6 as a string


@pytest.mark.parametrize("setting,message", [
    ({"tie_word_embeddings": False}, "tie_word_embeddings=false: megagpt's output layer is the token embedding"),
    ({"scale_attn_weights": False}, "scale_attn_weights=false (scores not divided by sqrt(head size))"),
    ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn are not supported"),
    ({"activation_function": "relu"}, "activation_function='relu'"),
])
def test_import_hf_refuses_a_gpt2_it_would_read_wrong(setting, message):
    from transformers import GPT2Config

    from megagpt.hf import model_config_from_gpt2

    with pytest.raises(ConfigError, match=re.escape(message)):
        model_config_from_gpt2(GPT2Config(n_layer=2, n_embd=64, n_head=4, **setting))
    model_config_from_gpt2(GPT2Config(n_layer=2, n_embd=64, n_head=4))  # the defaults: GPT-2 itself


@pytest.mark.parametrize("stage,overrides,message", [
    ("pretrain", ["sft.data=demos.jsonl"], "sft.data is set, which makes this a config for megagpt sft, not megagpt "
                                           "pretrain (unset it: sft.data=null)"),
    ("rm", ["rm.data=c.jsonl", "sft.data=demos.jsonl"], "sft.data is set, which makes this a config for megagpt sft"),
    ("sft", ["sft.data=demos.jsonl", "rm.data=c.jsonl"], "rm.data is set, which makes this a config for megagpt rm"),
    ("sft", ["sft.data=demos.jsonl", "rlhf.prompts=p.jsonl"], "rlhf.prompts is set"),
    ("ppo", ["rlhf.prompts=p.jsonl", "finetune.task=classification"], "finetune.task is set"),
])
def test_a_config_for_another_stage_is_refused(stage, overrides, message):
    """A stage's input set where another stage runs would be taken for that stage's by validate() and the
    checkpoint checks (or ignored): one line saying which key makes it so."""
    from megagpt.config import check_stage_inputs

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_stage_inputs(load_config(TINY, overrides), stage)
    check_stage_inputs(load_config(TINY, overrides[:-1]), stage)  # without the other stage's input it passes


def test_configs_the_docs_name_are_found_from_any_directory(tmp_path, monkeypatch):
    """An install has no configs/ beside the user: `--config configs/model/...` (every doc's example) reads the
    copy shipped in the package, unless the current directory has its own."""
    from megagpt.eval.tasks import load_task

    monkeypatch.chdir(tmp_path)
    assert load_config("configs/model/gpt3-175b.yaml").model.num_layers == 96
    assert load_task("configs/eval/capitals.yaml").test  # and the task's own files beside it
    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "model" / "gpt3-175b.yaml").write_text("model:\n  num_layers: 3\n")
    assert load_config("configs/model/gpt3-175b.yaml").model.num_layers == 3
    with pytest.raises(ConfigError, match="config file .*configs/model/gpt5.yaml not found"):
        load_config("configs/model/gpt5.yaml")


def test_a_users_config_may_base_itself_on_a_shipped_preset(tmp_path, monkeypatch):
    """`base: configs/model/gpt3-small.yaml` in a file of one's own was looked for beside that file only."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "run.yaml").write_text("base: configs/model/gpt3-small.yaml\nparallel: {tp: 4}\n")
    cfg = load_config(str(tmp_path / "mine" / "run.yaml"))
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.parallel.tp) == (12, 768, 4)
    (tmp_path / "mine" / "configs" / "model").mkdir(parents=True)  # one beside the file is that file's own
    (tmp_path / "mine" / "configs" / "model" / "gpt3-small.yaml").write_text("model: {num_layers: 3}\n")
    assert load_config(str(tmp_path / "mine" / "run.yaml")).model.num_layers == 3


def test_example_files_the_shipped_configs_name_are_found_from_any_directory(tmp_path, monkeypatch):
    """configs/eval/finetune-keyword.yaml's own example names finetune.train=configs/eval/keyword.train.jsonl: an
    install has no configs/ beside the user, and the command said 'file not found'."""
    from megagpt.config import validate_data_paths

    monkeypatch.chdir(tmp_path)
    given = ["finetune.init=runs/demo", "finetune.train=configs/eval/keyword.train.jsonl",
             "finetune.test=configs/eval/keyword.test.jsonl"]
    cfg = load_config("configs/eval/finetune-keyword.yaml", given)
    validate_data_paths(cfg)
    with open(cfg.finetune.train) as shipped, open(os.path.join(REPO, "configs/eval/keyword.train.jsonl")) as ours:
        assert shipped.read() == ours.read()
    (tmp_path / "configs" / "eval").mkdir(parents=True)
    (tmp_path / "configs" / "eval" / "keyword.train.jsonl").write_text('{"text": "a file", "label": 1}\n')
    cfg = load_config("configs/eval/finetune-keyword.yaml", given)  # the directory's own copy comes first
    assert cfg.finetune.train == "configs/eval/keyword.train.jsonl"
    assert cfg.finetune.test != "configs/eval/keyword.test.jsonl"
    assert load_config(None, ["sft.data=configs/eval/nothing.jsonl"]).sft.data == "configs/eval/nothing.jsonl"


def test_a_ppo_run_saved_with_a_schedule_it_never_applied_resumes_without_one(tmp_path):
    """PPO ignored optim.warmup_tokens (the default is 375M) until it refused one: a run saved before then must
    resume with the setting at 0, which the resume check would otherwise call another config."""
    from megagpt.errors import CheckpointError
    from megagpt.train.checkpoint import check_same_run

    ppo = ["rlhf.prompts=p.jsonl", "rlhf.actor_init=a", "rlhf.reward_init=r"]
    saved = load_config(None, ppo + ["optim.warmup_tokens=10240"]).to_dict()
    check_same_run(saved, load_config(None, ppo + ["optim.warmup_tokens=0"]), "ck")
    with pytest.raises(CheckpointError, match="optim.warmup_tokens=0 \\(checkpoint has 10240\\)"):
        check_same_run(load_config(None, ["optim.warmup_tokens=10240"]).to_dict(),
                       load_config(None, ["optim.warmup_tokens=0"]), "ck")  # pretraining's schedule is the run's


def test_slurm_times_and_sizes_read_as_written(tmp_path):
    """YAML 1.1 reads 12:00:00 as the base-60 number 43200, and 60 or 8000 as numbers: every unquoted Slurm time
    but those with a leading zero was 'not a valid str'. A number given to a text setting keeps its text."""
    from data_pipeline.config import load_corpus_config

    (tmp_path / "in.jsonl").write_text('{"text": "x"}\n')
    base = [f"input.paths=[{tmp_path / 'in.jsonl'}]", "executor.kind=slurm"]
    for given in ("12:00:00", "10:00", "60", "0100", "1-12:00:00", "0"):
        assert load_corpus_config(None, base + [f"executor.time={given}"]).executor.time == given
    for given in ("8000", "0", "16G"):
        assert load_corpus_config(None, base + [f"executor.mem={given}"]).executor.mem == given
    (tmp_path / "c.yaml").write_text(f"input: {{paths: [{tmp_path / 'in.jsonl'}]}}\nexecutor:\n  kind: slurm\n  time: 12:00:00\n"
                                     "  mem: 8000\n")
    cfg = load_corpus_config(str(tmp_path / "c.yaml"))
    assert (cfg.executor.time, cfg.executor.mem) == ("12:00:00", "8000")
    assert type(load_config(None, ["train.steps=1_000"]).train.steps) is int  # numbers stay plain numbers
    with pytest.raises(ConfigError, match=r"optim.lr='1:30' is not a valid float"):
        load_config(None, ["optim.lr=1:30"])


def test_yaml_reads_as_a_user_means_it(tmp_path):
    """Leading zeros are decimal (YAML 1.1 read train.steps=010 as octal 8); merge keys are read, the mapping's own
    keys overriding them; a list as a key and a key given twice in an override are one-line errors."""
    assert load_config(None, ["train.steps=010"]).train.steps == 10
    (tmp_path / "merge.yaml").write_text("train:\n  <<: {steps: 3, seed: 7}\n  steps: 5\n")
    cfg = load_config(str(tmp_path / "merge.yaml"))
    assert (cfg.train.steps, cfg.train.seed) == (5, 7)
    (tmp_path / "listkey.yaml").write_text("train:\n  [steps]: 3\n")
    with pytest.raises(ConfigError, match=r"listkey.yaml is not valid YAML: a key must be a name, not a list"):
        load_config(str(tmp_path / "listkey.yaml"))
    with pytest.raises(ConfigError, match=r"malformed override 'train=\{steps: 1, steps: 2\}': key 'steps' given twice"):
        load_config(None, ["train={steps: 1, steps: 2}"])


@pytest.mark.parametrize("override,message", [
    ("finetune.lm_coef=.inf", "finetune.lm_coef=inf must be finite"),  # trained to 'inf loss: the run diverged'
    ("rlhf.kl_coef=.nan", "rlhf.kl_coef=nan must be finite"),
    ("data.weights=[1, .inf]", r"data.weights=\[1.0, inf\] must be finite"),
    ("run.dist_timeout_minutes=1e16", r"run.dist_timeout_minutes=1e\+16 must be a positive number of minutes, at "
                                      r"most 1,000,000"),  # an OverflowError traceback in every rank
    ("train.steps=1e20", r"train.steps=100000000000000000000 is more than 100,000,000 steps"),  # built a list forever
])
def test_settings_past_any_use_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_config(None, ["finetune.task=classification", override]), 1, check_data=False)


def test_batch_sizes_past_the_ramp_are_the_full_batch():
    from megagpt.train.schedules import batch_ramp, batch_sizes

    cfg = load_config(None, ["train.steps=40", "train.global_batch_size=32", "train.batch_ramp_start=8",
                             "train.batch_ramp_increment=8", "train.batch_ramp_tokens=20000", "model.seq_length=64"])
    ramp, tokens, expected = batch_ramp(cfg), 0, []
    for _ in range(40):  # the schedule step by step
        expected.append(ramp.batch_size(tokens))
        tokens += expected[-1] * 64
    assert batch_sizes(cfg) == expected and expected[0] == 8 and expected[-1] == 32


def test_settings_read_whole_dump_as_yaml(tmp_path):
    """A dict or untyped list setting keeps what YAML read: its ints were the text-keeping kind, which yaml.safe_dump
    refused (PPO's rlhf.layout, a corpus config's n-gram settings: run.dir/config.yaml and Slurm's config file)."""
    import yaml

    from data_pipeline.config import load_corpus_config

    cfg = load_config(None, ["rlhf.layout={actor: {ranks: 2, tp: 2}, critic: {ranks: 2, tp: 1}}"])
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict()))["rlhf"]["layout"]["actor"] == {"ranks": 2, "tp": 2}
    corpus = load_corpus_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "data",
                                             "commoncrawl-example.yaml"), check_inputs=False)
    yaml.safe_dump(dataclasses.asdict(corpus))


def test_a_nested_merge_that_overrides_what_it_merged_is_no_second_key(tmp_path):
    (tmp_path / "c.yaml").write_text("x-b: &b {steps: 3, seed: 7}\nx-a: &a {<<: *b, steps: 4}\n")
    from megagpt.config import load_yaml

    assert load_yaml(open(tmp_path / "c.yaml")) == {"x-b": {"steps": 3, "seed": 7}, "x-a": {"steps": 4, "seed": 7}}
    (tmp_path / "t.yaml").write_text("train:\n  <<: {<<: {steps: 3, seed: 7}, steps: 4}\n  seed: 8\n")
    cfg = load_config(str(tmp_path / "t.yaml"))
    assert (cfg.train.steps, cfg.train.seed) == (4, 8)
