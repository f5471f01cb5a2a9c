"""Training small models for controlled studies (``train_tiny``)."""

from .tiny import TinyRun, checkpoint_steps, read_corpus, tiny_gpt_neox, train_bpe_tokenizer, train_tiny

__all__ = ["TinyRun", "checkpoint_steps", "read_corpus", "tiny_gpt_neox", "train_bpe_tokenizer", "train_tiny"]
