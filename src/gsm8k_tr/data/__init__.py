"""Data: reading sources, aligning GSM8K-TR with English GSM8K, prepared splits, prompts and stage rows.

Never imports training or inference.
"""
