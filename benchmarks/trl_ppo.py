"""TRL's PPO trainer on a model exported by `megagpt export-hf`: the peer run of benchmarks/ppo_throughput.py.

    .venv-trl/bin/python benchmarks/trl_ppo.py HF_DIR PROMPTS_JSONL WORK_DIR ITERATIONS ROLLOUTS NEW_TOKENS EPOCHS

Runs in the venv of benchmarks/requirements-trl.txt, never megagpt's. Policy and reference
are the exported GPT-2; reward and value models are GPT2ForSequenceClassification on the same
weights (a fresh scalar head: throughput does not depend on what the reward says). One
iteration is one TRL batch of ROLLOUTS prompts; the first is left out of the rate, as in
megagpt's rows. Prints one JSON line of the figures ppo_throughput.py tabulates (NaN for the
per-phase times, which TRL does not report).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
from datasets import Dataset
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast,
                          TrainerCallback)


class Clock(TrainerCallback):
    """Wall time of every optimizer pass over a rollout batch (TRL calls on_step_end once per batch)."""

    def __init__(self):
        self.marks = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(time.perf_counter())


def main() -> None:
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    hf_dir, prompts_path, work, iterations, rollouts, new_tokens, epochs = sys.argv[1:8]
    iterations, rollouts, new_tokens, epochs = int(iterations), int(rollouts), int(new_tokens), int(epochs)
    torch.manual_seed(0)
    # the tokenizer file itself: export-hf's tokenizer_config names a class older transformers lack
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(hf_dir, "tokenizer.json"),
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>", padding_side="left")
    with open(prompts_path) as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    dataset = Dataset.from_dict({"input_ids": (ids * (iterations * rollouts // len(ids) + 1))[:iterations * rollouts]})
    policy = AutoModelForCausalLM.from_pretrained(hf_dir)
    reference = AutoModelForCausalLM.from_pretrained(hf_dir)
    reward = AutoModelForSequenceClassification.from_pretrained(hf_dir, num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(hf_dir, num_labels=1)
    for model in (reward, value):
        model.config.pad_token_id = tokenizer.pad_token_id
    config = PPOConfig(output_dir=work, per_device_train_batch_size=rollouts, gradient_accumulation_steps=1,
                       num_mini_batches=1, num_ppo_epochs=epochs, total_episodes=iterations * rollouts,
                       response_length=new_tokens, temperature=1.0, kl_coef=0.02, stop_token="eos",
                       local_rollout_forward_batch_size=rollouts, learning_rate=1e-4, num_sample_generations=0,
                       report_to=[], save_strategy="no", logging_steps=1000, use_cpu=True, seed=0)
    clock = Clock()
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=reference,
                         reward_model=reward, train_dataset=dataset, value_model=value, callbacks=[clock])
    clock.marks = [time.perf_counter()]
    trainer.train()
    steps = [b - a for a, b in zip(clock.marks, clock.marks[1:])][1:]
    print(json.dumps({"samples_per_s": rollouts * len(steps) / sum(steps), "generate_s": float("nan"),
                      "score_s": float("nan"), "train_s": float("nan"), "gen_tokens_per_s": float("nan"),
                      "iterations": len(steps) + 1}))


if __name__ == "__main__":
    main()
