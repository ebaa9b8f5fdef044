"""Training: the SFT and GRPO stages on TRL and what they add to its trainers."""
