"""The score variables :func:`brainalign.encoding.fit` returns: one registry.

Each entry names a variable, its dimensions in a fit's result, its dtype, its
``long_name`` (a template filled with the fit's settings) and when it is there. A new
score variable is one entry here plus the code in :mod:`brainalign.encoding.api` that
computes it; the sweep's store layout is read from this table (prepend ``checkpoint``
to ``dims``), so a store made with other variables is refused before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ScoreVariable", "SCORE_VARIABLES", "fit_variables"]

#: when a variable is in a result: always, with ``stats=True``, with ``rois``, or when
#: the dataset has repeats of the test stories
WHEN = ("always", "stats", "rois", "ceiling")


@dataclass(frozen=True)
class ScoreVariable:
    """One variable of :func:`brainalign.encoding.fit`'s result.

    Attributes
    ----------
    name : str
    dims : tuple of str
        Dimensions in a fit's result (a sweep's store prepends ``checkpoint``).
    dtype : str
    long_name : str
        Template of ``attrs["long_name"]``, filled by :meth:`describe` with the fit's
        settings (``fdr``, ``ceiling``, ``n_boot``, ``boot_block_length``, ``seed``,
        ``pvalue_method``, ``roi_method``).
    when : {"always", "stats", "rois", "ceiling"}
    """

    name: str
    dims: tuple[str, ...]
    dtype: str
    long_name: str
    when: str = "always"

    def describe(self, **settings: Any) -> str:
        """The ``long_name`` with the fit's settings filled in."""
        return self.long_name.format(**settings)


_TARGET = ("layer", "subject", "target")
_ROI = ("layer", "subject", "roi")

#: every score variable, in the order a result lists them
SCORE_VARIABLES: dict[str, ScoreVariable] = {v.name: v for v in (
    ScoreVariable("score", _TARGET, "float32", "held-out Pearson r"),
    ScoreVariable("r2", _TARGET, "float32", "held-out R^2"),
    ScoreVariable("alpha", _TARGET, "float32", "ridge penalty chosen by story-wise CV"),
    ScoreVariable("cv_score", _TARGET, "float32",
                  "training-story CV Pearson r at the chosen alpha (mean over folds)"),
    ScoreVariable("roi_score", _ROI, "float32", "ROI-mean held-out r", "rois"),
    ScoreVariable("roi_boot", (*_ROI, "boot"), "float32",
                  "ROI-mean held-out r, block bootstrap replicates (blocks of {boot_block_length} TRs within test "
                  "stories, {n_boot} replicates, seed {seed})", "rois"),
    ScoreVariable("roi_null", (*_ROI, "term"), "float32",
                  "DCT terms of the ROI-mean held-out r (their sum is the ROI mean less its fixed part); the null "
                  "flips their signs: {roi_method}", "rois"),
    ScoreVariable("pvalue", _TARGET, "float32", "{pvalue_method}", "stats"),
    ScoreVariable("significant", _TARGET, "bool", "BH-FDR q < {fdr} over targets", "stats"),
    ScoreVariable("ceiling", ("subject", "target"), "float32", "noise ceiling ({ceiling})", "ceiling"),
    ScoreVariable("score_normalised", _TARGET, "float32", "score / ceiling (not clipped)", "ceiling"),
)}


def fit_variables(*, stats: bool, rois: bool, ceiling: bool) -> dict[str, ScoreVariable]:
    """The variables a fit with these options returns (``ceiling``: the dataset has
    repeats of the test stories), in :data:`SCORE_VARIABLES`' order."""
    on = {"always", *(["stats"] if stats else []), *(["rois"] if rois else []), *(["ceiling"] if ceiling else [])}
    return {k: v for k, v in SCORE_VARIABLES.items() if v.when in on}
