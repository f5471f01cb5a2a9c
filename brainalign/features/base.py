"""Word-level features of every layer, and the design matrix built from them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ValidationError
from ..stimulus import Story
from ..timing import Delayer, check_words_in_scan, lanczos_matrix, zscore_per_story

__all__ = ["WordFeatures", "design"]


class WordFeatures:
    """Hidden states of one model checkpoint: (story, layer) -> (n_words x hidden).

    Layer 0 is the embedding output; layer ``n_layers`` the last block's output.

    Parameters
    ----------
    model : str
        Model name or path.
    revision : str or None
        Checkpoint (hub revision, local folder name) or None for the default.
    layers : sequence of int
        Layers present.
    n_layers : int
        Number of transformer blocks of the model (so ``depth = layer / n_layers``).
    loader : mapping (story, layer) -> array, or callable (story, layer) -> array
        Where the arrays come from (in memory, or lazily from the cache).
    stories : sequence of str
    training : dict, optional
        Training axis of this checkpoint: ``{"step": int|None, "tokens": float|None}``.
    metrics : dict, optional
        Cheap internal metrics computed in the same pass (per-story loss, per-layer norm).
    """

    def __init__(
        self,
        model: str,
        revision: str | None,
        layers: Sequence[int],
        n_layers: int,
        loader: Mapping[tuple[str, int], np.ndarray] | Callable[[str, int], np.ndarray],
        stories: Sequence[str],
        training: dict | None = None,
        metrics: dict | None = None,
        info: dict | None = None,
    ) -> None:
        self.model = str(model)
        self.revision = revision
        self.layers = [int(layer) for layer in layers]
        self.n_layers = int(n_layers)
        self.stories = list(stories)
        self._loader = loader
        self.training = dict(training or {"step": None, "tokens": None})
        self.metrics = dict(metrics or {})
        self.info = dict(info or {})

    def get(self, story: str, layer: int) -> np.ndarray:
        """float32 (n_words x hidden) features of ``story`` at ``layer``."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} not extracted (layers: {self.layers})")
        if story not in self.stories:
            raise KeyError(f"story {story!r} not extracted")
        src = self._loader
        arr = src(story, layer) if callable(src) else src[(story, layer)]
        return np.asarray(arr, dtype=np.float32)

    def depth(self, layer: int) -> float:
        return layer / self.n_layers if self.n_layers else 0.0

    def __repr__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"WordFeatures({self.model}{rev}, layers {self.layers}, {len(self.stories)} stories)"


def design(
    features: WordFeatures | Callable[[str], np.ndarray],
    stories: Sequence[Story],
    layer: int | None = None,
    delays: Sequence[int] = (1, 2, 3, 4),
    window: int = 3,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Design matrix for ``stories`` stacked in order: Lanczos to each story's TR grid,
    z-scored per story, delayed per story (nothing crosses a story boundary).

    ``features`` is a :class:`WordFeatures` (then ``layer`` is required) or any
    callable ``story_name -> (n_words x d)`` array.

    Raises
    ------
    ValidationError
        A story whose words run well past its TR grid (they would reach no TR;
        :func:`~brainalign.timing.check_words_in_scan`), or features of the wrong shape.
    """
    check_words_in_scan(stories, window=window, warn=False)
    if isinstance(features, WordFeatures):
        if layer is None:
            raise ValidationError("design(): layer= is required with WordFeatures")
        get = lambda name: features.get(name, layer)  # noqa: E731
    else:
        get = features
    blocks = []
    for s in stories:
        x = np.asarray(get(s.name), dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != s.n_words:
            raise ValidationError(f"story {s.name!r}: features have shape {x.shape}, expected ({s.n_words}, d)")
        if not np.all(np.isfinite(x)):
            raise ValidationError(f"story {s.name!r}: features contain NaN or inf (layer {layer})")
        blocks.append(lanczos_matrix(s.word_times, s.tr_times, window=window, tr=s.tr) @ x)
    lengths = [s.n_trs for s in stories]
    X = zscore_per_story(np.vstack(blocks), lengths)
    return Delayer(delays).fit_transform(X, story_lengths=lengths).astype(dtype, copy=False)
