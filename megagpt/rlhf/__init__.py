"""InstructGPT: supervised fine-tuning, the reward model and PPO-ptx."""
