"""Language-model features for every layer of every training checkpoint.

* :func:`extract` -- word-level hidden states of all layers of one checkpoint, cached.
* :func:`design` -- a layer's features on the TR grid: Lanczos, z-scored, delayed.
* :func:`list_revisions`, :func:`parse_revision` -- checkpoints and their training axis.
* :func:`extract_options` -- :func:`extract` arguments from a run config's ``features:``.
* :func:`minilm_path` -- the pretrained MiniLM shipped with the package's dependencies;
  :func:`minilm_features` -- a cheap causal feature source from it (``Story -> array``).
"""

from .align import Alignment, align_words
from .base import WordFeatures, design
from .cache import FeatureCache
from .extraction import Features, extract, extract_options
from .loading import minilm_path
from .revisions import list_revisions, parse_revision
from .sources import minilm_features
from .windows import causal_windows, encoder_windows

__all__ = [
    "WordFeatures",
    "design",
    "extract",
    "extract_options",
    "Features",
    "FeatureCache",
    "minilm_path",
    "minilm_features",
    "list_revisions",
    "parse_revision",
    "align_words",
    "Alignment",
    "causal_windows",
    "encoder_windows",
]
