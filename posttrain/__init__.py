"""Post-training: supervised fine-tuning, a reward model, PPO and DPO over the pre-trained models."""
