"""Training-time data: tokenizer, Megatron shards, blended datasets and batches."""
