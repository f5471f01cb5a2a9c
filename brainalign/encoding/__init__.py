"""Encoding models: ridge from delayed LM features to brain responses, and their statistics.

* :func:`fit` -- every layer x subject of a :class:`~brainalign.features.WordFeatures`
  against a :class:`~brainalign.datasets.Dataset`, as an ``xarray.Dataset`` whose
  variables are listed in :data:`SCORE_VARIABLES`.
* :func:`fit_ridge_cv` -- the array core (story-wise CV, per-target alphas), equal to
  himalaya's RidgeCV / KernelRidgeCV given the same splits; :func:`fit_ridge_cv_many`
  for subjects sharing one design.
* :class:`Encoder` -- a scikit-learn estimator (per-story z-scoring + FIR delays + ridge).
* statistics: :func:`noise_ceiling`, :func:`permutation_test`, :func:`fdr`,
  :func:`bootstrap_roi_ci`; :func:`partition_variance` (features and a dataset) /
  :func:`partition_variance_arrays` (arrays) against word and phoneme rate.

Deprecated names (DeprecationWarning): ``variance_partition`` (now
``partition_variance_arrays``); the keywords ``score_func`` (now ``alpha_criterion``),
``block_length`` of the permutation test (now ``block_size``) and ``fdr_q`` (now ``fdr``).
"""

from .api import fit
from .encoder import Encoder, NotFittedError
from .partition import baseline_design, partition_variance, partition_variance_arrays, variance_partition
from .ridge import (
    DEFAULT_ALPHAS,
    RidgeCVResult,
    fit_ridge_cv,
    fit_ridge_cv_many,
    pearson_r,
    r2_score,
    story_folds,
)
from .significance import sign_randomisation_test
from .stats import bootstrap_roi_ci, fdr, noise_ceiling, permutation_test, significance
from .variables import SCORE_VARIABLES, ScoreVariable, fit_variables

__all__ = [
    "DEFAULT_ALPHAS",
    "Encoder",
    "NotFittedError",
    "RidgeCVResult",
    "SCORE_VARIABLES",
    "ScoreVariable",
    "baseline_design",
    "bootstrap_roi_ci",
    "fdr",
    "fit",
    "fit_ridge_cv",
    "fit_ridge_cv_many",
    "fit_variables",
    "noise_ceiling",
    "partition_variance",
    "partition_variance_arrays",
    "pearson_r",
    "permutation_test",
    "r2_score",
    "sign_randomisation_test",
    "significance",
    "story_folds",
    "variance_partition",
]
