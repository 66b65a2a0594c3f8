"""Pretraining: schedules, the DeepSpeed engine, metrics and the loop."""
