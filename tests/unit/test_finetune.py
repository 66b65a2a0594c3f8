"""GPT-1 fine-tuning's pieces against hand computations: the input transforms, the sample layout, the
head read at the extract token, and L3 = L2 + λ·L1."""

import json

import pytest
import torch
import torch.nn.functional as F

from megagpt.errors import DataError
from megagpt.eval.finetune import (Example, FinetuneDataset, class_logits, finetune_loss, read_examples,
                                   special_tokens, transform)


class Words:
    """A tokenizer of whitespace words to fixed ids, enough to read the transforms."""

    ids = {"a": 1, "b": 2, "c": 3, "d": 4}

    def encode(self, text):
        return [self.ids[w] for w in text.split()]


def test_transforms_are_gpt1s():
    s, d, e = special_tokens(100)
    assert (s, d, e) == (100, 101, 102)
    tok = Words()
    assert transform({"text": "a b", "label": 1}, "classification", tok, s, d, e) == Example([[s, 1, 2, e]], 1)
    assert transform({"premise": "a", "hypothesis": "b c", "label": 0}, "entailment", tok, s, d, e) == \
        Example([[s, 1, d, 2, 3, e]], 0)
    assert transform({"text_a": "a", "text_b": "b", "label": 1}, "similarity", tok, s, d, e) == \
        Example([[s, 1, d, 2, e], [s, 2, d, 1, e]], 1)
    assert transform({"context": "a", "choices": ["b", "c d"], "label": 1}, "multiple_choice", tok, s, d, e) == \
        Example([[s, 1, d, 2, e], [s, 1, d, 3, 4, e]], 1)


def test_samples_hold_targets_extract_positions_and_the_label():
    ds = FinetuneDataset([Example([[100, 1, 101, 2, 102], [100, 1, 101, 3, 4, 102]], 1)], seq_length=8, pad=0,
                         first_special=100, num_samples=1, seed=0)
    sample = ds[0]
    t = 8
    assert sample["tokens"][1].tolist() == [100, 1, 101, 3, 4, 102, 0, 0]
    assert sample["labels"][1, :5].tolist() == [1, 101, 3, 4, 102]
    assert sample["labels"][:, t].tolist() == [4, 5] and sample["labels"][:, t + 1].tolist() == [1, 1]
    # the LM loss reads real text only: not the added tokens, not the padding
    assert sample["loss_mask"][1, :t].tolist() == [1, 0, 1, 1, 0, 0, 0, 0]
    assert sample["loss_mask"][:, t].tolist() == [1, 1]


def test_head_is_read_at_the_extract_token_summed_for_similarity_masked_for_absent_choices():
    head = torch.randn(2, 3, 6, 4)
    at = torch.tensor([[5, 2, 0], [1, 1, 3]])
    present = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    picked = torch.stack([torch.stack([head[b, c, at[b, c]] for c in range(3)]) for b in range(2)])  # (2, 3, 4)
    assert torch.equal(class_logits(head, at, present, "similarity"), picked.sum(1))
    scores = class_logits(head[..., :1], at, present, "multiple_choice")
    assert scores[0, 2] == float("-inf") and torch.equal(scores[1], picked[1, :, 0])


@pytest.mark.parametrize("lm_coef", [0.0, 0.5])
def test_loss_is_l2_plus_lambda_l1(lm_coef):
    torch.manual_seed(0)
    b, c, t, v = 2, 1, 5, 11
    logits, head = torch.randn(b, c, t, v), torch.randn(b, c, t, 3)
    targets = torch.randint(0, v, (b, c, t + 2))
    targets[..., t] = torch.tensor([[4], [2]])
    targets[..., t + 1] = torch.tensor([[2], [0]])
    mask = torch.ones(b, c, t + 1)
    mask[0, 0, 3:t] = 0
    got = finetune_loss("classification", lm_coef, v, None)(
        (logits, head), (targets, mask))
    l2 = F.cross_entropy(torch.stack([head[0, 0, 4], head[1, 0, 2]]), torch.tensor([2, 0]))
    logp = logits.log_softmax(-1).gather(-1, targets[..., :t, None])[..., 0]
    l1 = -(logp * mask[..., :t]).sum() / mask[..., :t].sum()
    assert got.item() == pytest.approx((l2 + lm_coef * l1).item(), rel=1e-5)


@pytest.mark.parametrize("row,message", [
    ({"text": "a", "label": 2}, 'line 2: "label" 2 is outside 0..1 (finetune.num_labels=2)'),
    ({"text": "", "label": 0}, 'line 2: needs a non-empty string field "text"'),
    ({"text": "a", "label": "yes"}, "line 2: needs an integer \"label\", got 'yes'"),
    ({"text": "a \ud800", "label": 0}, "line 2: holds '\\ud800', a lone UTF-16 surrogate"),  # tokenizers' TypeError
])
def test_bad_records_name_their_file_and_line(tmp_path, row, message):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "fine", "label": 1}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as err:
        read_examples(str(path), "classification", 2)
    assert str(path) in str(err.value) and message in str(err.value)
