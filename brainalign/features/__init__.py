"""Language-model features for every layer of every training checkpoint."""

from .base import WordFeatures, design

__all__ = ["WordFeatures", "design"]
