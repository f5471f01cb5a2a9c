"""Language-model features for every layer of every training checkpoint.

* :func:`extract` -- word-level hidden states of all layers of one checkpoint, cached.
* :func:`design` -- a layer's features on the TR grid: Lanczos, z-scored, delayed.
* :func:`list_revisions`, :func:`parse_revision` -- checkpoints and their training axis.
* :func:`minilm_path` -- the pretrained MiniLM shipped with the package's dependencies.
"""

from .align import Alignment, align_words
from .base import WordFeatures, design
from .cache import FeatureCache
from .extraction import Features, extract
from .loading import minilm_path
from .revisions import list_revisions, parse_revision
from .windows import causal_windows, encoder_windows

__all__ = [
    "WordFeatures",
    "design",
    "extract",
    "Features",
    "FeatureCache",
    "minilm_path",
    "list_revisions",
    "parse_revision",
    "align_words",
    "Alignment",
    "causal_windows",
    "encoder_windows",
]
