"""Generation: the KV cache reproduces the full forward pass; sampling rules do what they say."""

import pytest
import torch

from megagpt.config import load_config
from megagpt.errors import ConfigError
from megagpt.generation import Sampling, generate, next_token
from megagpt.model.gpt import GPT
from megagpt.model.kv_cache import KVCache
from megagpt.model.layers import LayerContext


def model(tp_group, *overrides):
    cfg = load_config(None, ["model.num_layers=4", "model.hidden_size=32", "model.num_heads=4", "model.seq_length=32",
                             "model.vocab_size=100", "model.make_vocab_size_divisible_by=64", *overrides]).model
    return GPT(LayerContext(model=cfg, seed=3, tp_group=tp_group)).eval()


@pytest.mark.parametrize("attention", [[], ["model.attention=alternating", "model.local_window=4"],
                                       ["model.attention=alternating", "model.local_window=4",
                                        "model.sparse_pattern=strided"]], ids=["dense", "local", "strided"])
def test_cached_decoding_equals_the_full_forward_pass(world_of_one, attention):
    gpt = model(world_of_one, *attention)
    tokens = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = gpt(tokens)
        cache = KVCache.empty(4, 2, 4, 32, 8, torch.float32, torch.device("cpu"))
        pieces = [gpt(tokens[:, :7], cache)] + [gpt(tokens[:, i:i + 1], cache) for i in range(7, 20)]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_sampling_rules():
    gen = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5], [4.0, 0.0, 0.0, 0.0]])
    assert next_token(logits, Sampling(temperature=0), gen).tolist() == [1, 0]
    assert next_token(logits, Sampling(top_k=1), gen).tolist() == [1, 0]
    assert next_token(logits, Sampling(top_p=0.01), gen).tolist() == [1, 0]
    draws = torch.stack([next_token(logits, Sampling(top_k=2), gen) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {1, 3} and set(draws[:, 1].tolist()) <= {0, 1, 2, 3}
    a = [next_token(logits, Sampling(seed=5), [torch.Generator().manual_seed(5)] * 2).tolist() for _ in range(2)]
    assert a[0] == a[1]  # the same seed, the same draw
    for seed in range(20):  # a row's draw does not depend on the rows beside it
        alone = next_token(logits[:1], Sampling(), [torch.Generator().manual_seed(seed)])
        together = next_token(logits, Sampling(), [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(99)])
        assert together[0] == alone[0]


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = [torch.Generator().manual_seed(0)]
    draws = {next_token(logits, Sampling(top_p=0.8), gen).item() for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.8: tokens 2 and 3 are cut


def test_generate_stops_at_eod_and_checks_the_context(world_of_one):
    gpt = model(world_of_one)
    prompt = torch.tensor([[5, 6, 7]])
    out = generate(gpt, prompt, Sampling(max_new_tokens=10, temperature=0))
    assert out.shape == (1, 13) and out[0, :3].tolist() == [5, 6, 7]
    eod = out[0, 3].item()  # the first greedy token, declared the end: generation stops right there
    assert generate(gpt, prompt, Sampling(max_new_tokens=10, temperature=0), eod=eod).shape == (1, 4)
    with pytest.raises(ConfigError, match="exceeds the model's context model.seq_length=32"):
        generate(gpt, prompt, Sampling(max_new_tokens=30))


def test_new_tokens_are_the_tokenizers_own(world_of_one):
    """A tokenizer smaller than model.vocab_size (allowed) has no text for the ids past it: they were sampled, fed
    back to the model, and left out of the decoded text without a word."""
    gpt = model(world_of_one)
    prompt = torch.tensor([[5, 6, 7]] * 8)
    free = generate(gpt, prompt, Sampling(max_new_tokens=20, temperature=2.0, seed=1))
    assert (free[:, 3:] >= 10).any()  # an untrained model over 100 ids: most draws lie past the first 10
    kept = generate(gpt, prompt, Sampling(max_new_tokens=20, temperature=2.0, seed=1), vocab=10)
    assert kept.shape == free.shape and (kept[:, 3:] < 10).all()


@pytest.mark.parametrize("attention", [[], ["model.attention=alternating", "model.local_window=4"]],
                         ids=["dense", "local"])
def test_a_left_padded_batch_generates_what_each_prompt_does_alone(world_of_one, attention):
    gpt = model(world_of_one, *attention)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    width = max(map(len, prompts))
    batch = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    pad = torch.tensor([width - len(p) for p in prompts])
    for sampling in (Sampling(max_new_tokens=8, temperature=0), Sampling(max_new_tokens=8, top_k=20)):
        together = generate(gpt, batch, sampling, row_seeds=[3, 4, 5], pad=pad)
        for i, p in enumerate(prompts):
            alone = generate(gpt, torch.tensor([p]), sampling, row_seeds=[3 + i])
            assert together[i, width:].tolist() == alone[0, len(p):].tolist()


def test_a_tiny_temperature_is_greedy_and_a_non_finite_one_is_refused():
    """At 1e-40 the quotient overflowed to inf - inf = NaN, and the draw took the vocabulary's last token."""
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    for temperature in (1e-40, 1e-45):
        assert next_token(logits, Sampling(temperature=temperature), [torch.Generator().manual_seed(0)]).tolist() == [1]
    for temperature in (float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="must be >= 0 and finite"):
            Sampling(temperature=temperature).check()


def test_a_tokenizer_with_more_tokens_than_the_model_is_refused(tmp_path):
    """generate indexed past the embeddings (IndexError traceback); eval had its own check."""
    from megagpt.data.tokenizer import Tokenizer
    from megagpt.generation import generation_tokenizer

    path = tmp_path / "tokenizer.json"
    tok = Tokenizer.train(["open the file and read the path " * 4] * 20, 300)
    tok.save(str(path))
    cfg = load_config(None, ["model.vocab_size=100"])
    with pytest.raises(ConfigError, match=f"--tokenizer {path} has {tok.vocab_size} tokens but the checkpoint's "
                                          f"model.vocab_size is 100"):
        generation_tokenizer(str(tmp_path), cfg, str(path))
    assert generation_tokenizer(str(tmp_path), load_config(None, [f"model.vocab_size={tok.vocab_size}"]),
                                str(path)).vocab_size == tok.vocab_size


def test_a_checkpoint_whose_training_data_is_out_of_reach_asks_for_a_tokenizer(tmp_path, monkeypatch):
    """Run from another directory, the relative data.mixture of the checkpoint's config was reported as unreadable,
    as if the mixture were the problem: it asks for --tokenizer now."""
    from megagpt.generation import generation_tokenizer

    monkeypatch.chdir(tmp_path)  # not a checkout where `make demo` has run: there runs/demo/... is in reach

    cfg = load_config(None, ["data.mixture=runs/demo/corpus/mixture.json"])
    with pytest.raises(ConfigError, match="no tokenizer found for checkpoint .* pass --tokenizer"):
        generation_tokenizer(str(tmp_path / "checkpoints" / "step_00000001"), cfg)
