"""Training small models for controlled studies: ``train_tiny`` on text, ``train_task``
on synthetic tasks with known phases (induction heads, grokking)."""

from .tasks import TASKS, InductionTask, ModularAdditionTask, train_task
from .tiny import TinyRun, checkpoint_steps, read_corpus, tiny_gpt_neox, train_bpe_tokenizer, train_tiny

__all__ = ["TinyRun", "checkpoint_steps", "read_corpus", "tiny_gpt_neox", "train_bpe_tokenizer", "train_tiny",
           "train_task", "InductionTask", "ModularAdditionTask", "TASKS"]
