"""The planner's parameter counts against the models themselves, built on the meta device."""

import os

import pytest

from megagpt.config import load_config
from megagpt.planner import build_rank_on_meta, parameter_count, rank_parameters

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "model")


def preset(name: str):
    return load_config(os.path.join(MODELS, f"{name}.yaml")).model


def test_gpt3_175b_has_175_billion_parameters():
    assert 174.0e9 <= parameter_count(preset("gpt3-175b")) <= 175.5e9


@pytest.mark.parametrize("name,tp,pp", [("gpt3-175b", 8, 16), ("gpt3-13b", 4, 4), ("gpt3-xl", 2, 1),
                                        ("gpt2-small", 1, 2), ("gpt1", 2, 3)])
def test_rank_parameters_equal_the_model_built_on_meta(world_of_one, name, tp, pp):
    m = preset(name)
    for stage in sorted({0, pp // 2, pp - 1}):
        built = sum(p.numel() for module in build_rank_on_meta(m, tp, pp, stage) for p in module.parameters())
        assert built == rank_parameters(m, tp, pp, stage), (name, stage)


def test_rank_parameters_add_up_to_the_model():
    m = preset("gpt3-2.7b")
    whole = sum(rank_parameters(m, 1, 4, s) for s in range(4))
    tied_copy = m.padded_vocab_size * m.hidden_size + m.seq_length * m.hidden_size
    assert whole - tied_copy == parameter_count(m, padded_vocab=True)
