"""A scikit-learn style encoder for single fits: per-story scaling + FIR delays + ridge CV."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from ..errors import ValidationError
from ..timing import Delayer, story_bounds, zscore_per_story
from .ridge import DEFAULT_ALPHAS, fit_ridge_cv, pearson_r

__all__ = ["Encoder"]


class Encoder(RegressorMixin, BaseEstimator):
    """Delayer + per-story z-scoring + ridge with per-target alphas from story-wise CV.

    Parameters
    ----------
    delays : sequence of int
        FIR delays in TRs.
    alphas : array
        Candidate ridge penalties.
    n_folds : int
        Story folds for choosing alphas.
    scale : bool
        Z-score the features of each story before delaying.
    backend, method, score_func
        Passed to :func:`brainalign.encoding.fit_ridge_cv`.

    Attributes
    ----------
    coef_ : array (n_features * n_delays, n_targets)
    best_alphas_ : array (n_targets,)
    cv_scores_ : array (n_targets,)
    n_features_in_ : int

    Notes
    -----
    :meth:`score` returns the mean over targets of the per-target Pearson r (the field's
    encoding score), not R^2; :meth:`score_targets` gives the per-target values.
    """

    def __init__(self, delays: Sequence[int] = (1, 2, 3, 4), alphas: Any = DEFAULT_ALPHAS, n_folds: int = 5,
                 scale: bool = True, backend: Any = "auto", method: str = "auto", score_func: str = "l2"):
        self.delays = delays
        self.alphas = alphas
        self.n_folds = n_folds
        self.scale = scale
        self.backend = backend
        self.method = method
        self.score_func = score_func

    def _transform(self, X, story_lengths) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValidationError(f"X must be 2-D (TRs x features), got shape {X.shape}")
        lengths = list(story_lengths) if story_lengths is not None else [X.shape[0]]
        story_bounds(lengths, X.shape[0])
        if self.scale:
            X = zscore_per_story(X, lengths)
        return Delayer(self.delays).fit_transform(X, story_lengths=lengths).astype(np.float32)

    def fit(self, X, Y, story_lengths: Sequence[int]):
        """Fit on stacked training stories; ``story_lengths`` gives the rows of each."""
        if story_lengths is None:
            raise ValidationError("Encoder.fit needs story_lengths: folds hold out whole stories")
        Xd = self._transform(X, story_lengths)
        Y = np.asarray(Y, dtype=np.float32)
        if Y.ndim == 1:
            Y = Y[:, None]
        res = fit_ridge_cv(Xd, Y, story_lengths, alphas=self.alphas, n_folds=self.n_folds, method=self.method,
                           backend=self.backend, score_func=self.score_func, return_coef=True, progress=False)
        self.coef_ = res.coef
        self.best_alphas_ = res.best_alphas
        self.cv_scores_ = res.cv_scores
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X, story_lengths: Sequence[int] | None = None) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise ValidationError("this Encoder is not fitted yet: call fit() first")
        if np.asarray(X).shape[1] != self.n_features_in_:
            raise ValidationError(f"X has {np.asarray(X).shape[1]} features, the Encoder was fitted on {self.n_features_in_}")
        return self._transform(X, story_lengths) @ self.coef_

    def score_targets(self, X, Y, story_lengths: Sequence[int] | None = None) -> np.ndarray:
        """Per-target Pearson r between predictions and ``Y``."""
        Y = np.asarray(Y, dtype=np.float32)
        return pearson_r(Y if Y.ndim == 2 else Y[:, None], self.predict(X, story_lengths))

    def score(self, X, Y, story_lengths: Sequence[int] | None = None, sample_weight=None) -> float:
        return float(np.nanmean(self.score_targets(X, Y, story_lengths)))
