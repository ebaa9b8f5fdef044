"""gsm8k-tr: teach a small Turkish language model grade-school math (SFT + GRPO)."""

__version__ = "0.1.0"
