"""Inference: batched generation, evaluation, the generate command and the vLLM engine. Never imports train/."""
