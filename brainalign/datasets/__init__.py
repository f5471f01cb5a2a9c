"""Dataset adapters: stories (words + times) and responses, aligned row for row."""

from .base import Dataset

__all__ = ["Dataset"]
