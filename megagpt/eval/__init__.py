"""Evaluation as the GPT papers did it, from any checkpoint and TP size, on local files.

    scorer       log-likelihoods of token sequences from a checkpoint (vocabulary-parallel, any TP)
    perplexity   sliding-window perplexity, bits per token and per byte (GPT-2)
    tasks        in-context task files: completion, multiple choice, generation (read, checked)
    icl          zero/one/few-shot prompts and their scores (GPT-2, GPT-3)
"""
