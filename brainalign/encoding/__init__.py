"""Encoding models: ridge from delayed LM features to brain responses, and their statistics.

* :func:`fit` -- every layer x subject of a :class:`~brainalign.features.WordFeatures`
  against a :class:`~brainalign.datasets.Dataset`, as an ``xarray.Dataset``.
* :func:`fit_ridge_cv` -- the array core (story-wise CV, per-target alphas, subjects
  sharing one design), equal to himalaya's RidgeCV / KernelRidgeCV given the same splits.
* :class:`Encoder` -- a scikit-learn estimator (per-story z-scoring + FIR delays + ridge).
* statistics: :func:`noise_ceiling`, :func:`permutation_test`, :func:`fdr`,
  :func:`bootstrap_roi_ci`; :func:`variance_partition` / :func:`partition_variance`
  against word and phoneme rate.
"""

from .api import fit
from .encoder import Encoder
from .partition import baseline_design, partition_variance, variance_partition
from .ridge import DEFAULT_ALPHAS, RidgeCVResult, fit_ridge_cv, pearson_r, r2_score, story_folds
from .significance import sign_randomisation_test
from .stats import bootstrap_roi_ci, fdr, noise_ceiling, permutation_test, significance

__all__ = [
    "DEFAULT_ALPHAS",
    "Encoder",
    "RidgeCVResult",
    "baseline_design",
    "bootstrap_roi_ci",
    "fdr",
    "fit",
    "fit_ridge_cv",
    "noise_ceiling",
    "partition_variance",
    "pearson_r",
    "permutation_test",
    "r2_score",
    "sign_randomisation_test",
    "significance",
    "story_folds",
    "variance_partition",
]
