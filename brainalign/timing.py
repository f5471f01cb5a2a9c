"""From word times to the fMRI time grid.

The conventions here are the field's (and ds003020's reference pipeline's): word
features are resampled onto TR times with a 3-lobe Lanczos kernel (a weighted *sum*,
not a mean), z-scored per story, and delayed by 1-4 TRs so that a linear model can
learn a haemodynamic response (finite impulse response model). Cross-validation splits
by story, never by TR.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin

from .errors import ValidationError
from .stimulus import Story

__all__ = [
    "lanczos_kernel",
    "lanczos_matrix",
    "lanczos_resample",
    "Delayer",
    "trim",
    "zscore",
    "zscore_per_story",
    "story_bounds",
    "StoryKFold",
    "word_rate",
    "phoneme_rate",
    "downsample_story",
    "words_after_scan",
    "check_words_in_scan",
    "LATE_WORDS_FRACTION",
    "LATE_WORDS_SECONDS",
]

log = logging.getLogger(__name__)

#: a story is refused when more than this fraction of its words, spanning more than
#: :data:`LATE_WORDS_SECONDS`, come after its scan (a transcript of a longer recording,
#: or of another story); fewer late words are a warning
LATE_WORDS_FRACTION = 0.05
LATE_WORDS_SECONDS = 10.0


def lanczos_kernel(x: np.ndarray, window: int = 3) -> np.ndarray:
    """``L(x) = a sin(pi x) sin(pi x / a) / (pi x)^2``, ``L(0) = 1``, 0 for ``|x| > a``."""
    x = np.asarray(x, dtype=np.float64)
    a = float(window)
    out = np.zeros_like(x)
    inside = np.abs(x) <= a
    xi = x[inside]
    with np.errstate(divide="ignore", invalid="ignore"):
        val = a * np.sin(np.pi * xi) * np.sin(np.pi * xi / a) / (np.pi * xi) ** 2
    val[xi == 0] = 1.0
    out[inside] = val
    return out


def _check_times(times: np.ndarray, name: str) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1:
        raise ValidationError(f"{name} must be 1-D, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValidationError(f"{name} contains non-finite values (first at index {int(np.flatnonzero(~np.isfinite(t))[0])})")
    if t.size > 1 and np.any(np.diff(t) < 0):
        i = int(np.flatnonzero(np.diff(t) < 0)[0])
        raise ValidationError(f"{name} must be non-decreasing: {name}[{i + 1}]={t[i + 1]:.6g} < {name}[{i}]={t[i]:.6g}")
    return t


def lanczos_matrix(
    times: np.ndarray,
    new_times: np.ndarray,
    window: int = 3,
    cutoff_mult: float = 1.0,
    tr: float | None = None,
) -> sp.csr_matrix:
    """Sparse (n_new x n_old) matrix ``W`` with ``W[k, w] = L((t_k - t_w) * cutoff)``.

    ``cutoff = cutoff_mult / mean(diff(new_times))`` (or ``cutoff_mult / tr``). Build it
    once per story and apply it to every layer's features: ``W @ values``.
    """
    times = _check_times(times, "times")
    new_times = _check_times(new_times, "new_times")
    if new_times.size == 0:
        raise ValidationError("new_times is empty")
    if tr is None:
        if new_times.size < 2:
            raise ValidationError("new_times has fewer than 2 points: pass tr= to set the cutoff")
        tr = float(np.mean(np.diff(new_times)))
    if not tr > 0:
        raise ValidationError(f"tr must be positive, got {tr}")
    cutoff = cutoff_mult / tr
    half = window / cutoff
    lo = np.searchsorted(times, new_times - half, side="left")
    hi = np.searchsorted(times, new_times + half, side="right")
    counts = hi - lo
    rows = np.repeat(np.arange(new_times.size), counts)
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    cols = np.arange(rows.size) + starts
    weights = lanczos_kernel((new_times[rows] - times[cols]) * cutoff, window)
    return sp.csr_matrix((weights, (rows, cols)), shape=(new_times.size, times.size))


def lanczos_resample(
    values: np.ndarray,
    times: np.ndarray,
    new_times: np.ndarray,
    window: int = 3,
    cutoff_mult: float = 1.0,
    tr: float | None = None,
) -> np.ndarray:
    """Resample word-level ``values`` (n_words x d) onto ``new_times`` (TR times).

    ``out[k] = sum_w L((t_k - t_w) * cutoff) * values[w]`` with a ``window``-lobe Lanczos
    kernel ``L`` and ``cutoff = cutoff_mult / mean(diff(new_times))``: the unnormalised
    kernel-weighted sum of ds003020's reference pipeline. Computed in float64; a word
    exactly at a TR time adds its full value there, one farther than ``window`` lobes
    adds nothing.

    Parameters
    ----------
    values : array (n_words,) or (n_words, d)
    times : array (n_words,)
        Non-decreasing word times (seconds).
    new_times : array (n_trs,)
        Non-decreasing target times (seconds).
    window : int
        Number of Lanczos lobes.
    cutoff_mult : float
        Multiplier of the cutoff frequency ``1 / TR``.
    tr : float, optional
        Sets the cutoff when ``new_times`` has a single point.

    Returns
    -------
    array (n_trs,) or (n_trs, d), float64
    """
    vals = np.asarray(values, dtype=np.float64)
    squeeze = vals.ndim == 1
    if squeeze:
        vals = vals[:, None]
    if vals.ndim != 2:
        raise ValidationError(f"values must be 1-D or 2-D (n_words x d), got shape {vals.shape}")
    if not np.all(np.isfinite(vals)):
        r, c = np.nonzero(~np.isfinite(vals))
        raise ValidationError(f"values contain non-finite entries (first at word {r[0]}, column {c[0]})")
    times = np.asarray(times)
    if times.shape != (vals.shape[0],):
        raise ValidationError(f"times has shape {times.shape} but values has {vals.shape[0]} rows")
    out = lanczos_matrix(times, new_times, window=window, cutoff_mult=cutoff_mult, tr=tr) @ vals
    return out[:, 0] if squeeze else out


def story_bounds(story_lengths: Sequence[int], n_samples: int | None = None) -> np.ndarray:
    """Cumulative story boundaries ``[0, l0, l0+l1, ...]``, checked against ``n_samples``."""
    lengths = np.asarray(story_lengths, dtype=np.int64)
    if lengths.ndim != 1 or lengths.size == 0 or np.any(lengths <= 0):
        raise ValidationError(f"story_lengths must be a non-empty list of positive integers, got {list(story_lengths)}")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    if n_samples is not None and bounds[-1] != n_samples:
        raise ValidationError(f"story_lengths sum to {bounds[-1]} but the input has {n_samples} rows")
    return bounds


class Delayer(TransformerMixin, BaseEstimator):
    """Stack time-shifted copies of the input: a finite impulse response model.

    Block ``i`` of the output is the input shifted *down* by ``delays[i]`` rows (so row
    ``t`` sees the stimulus at ``t - d``), with zeros where the shift reaches before the
    start of a story. Shifts never cross story boundaries: pass ``story_lengths`` (to the
    constructor, or to :meth:`transform`) when the rows of several stories are stacked.

    Parameters
    ----------
    delays : sequence of int
        Delays in TRs; negative values shift up (zeros at each story's end).
    story_lengths : sequence of int, optional
        Rows per story, in order. Default: the whole input is one story.
    """

    def __init__(self, delays: Sequence[int] = (1, 2, 3, 4), story_lengths: Sequence[int] | None = None):
        self.delays = delays
        self.story_lengths = story_lengths

    def fit(self, X, y=None, story_lengths=None):
        X = self._validate(X)
        self.n_features_in_ = X.shape[1]
        return self

    def fit_transform(self, X, y=None, story_lengths=None):
        return self.fit(X).transform(X, story_lengths=story_lengths)

    def _validate(self, X) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValidationError(f"Delayer expects a 2-D array (TRs x features), got shape {X.shape}")
        delays = list(self.delays)
        if not delays or any(int(d) != d for d in delays):
            raise ValidationError(f"delays must be a non-empty list of integers, got {self.delays!r}")
        return X

    def transform(self, X, story_lengths: Sequence[int] | None = None) -> np.ndarray:
        X = self._validate(X)
        if hasattr(self, "n_features_in_") and X.shape[1] != self.n_features_in_:
            raise ValidationError(f"Delayer was fitted on {self.n_features_in_} features, got {X.shape[1]}")
        lengths = story_lengths if story_lengths is not None else self.story_lengths
        bounds = story_bounds(lengths if lengths is not None else [X.shape[0]], X.shape[0])
        n, p = X.shape
        out = np.zeros((n, p * len(self.delays)), dtype=X.dtype if np.issubdtype(X.dtype, np.floating) else np.float64)
        for i, d in enumerate(int(d) for d in self.delays):
            block = out[:, i * p : (i + 1) * p]
            for a, b in zip(bounds[:-1], bounds[1:]):
                if d >= 0:
                    if d < b - a:
                        block[a + d : b] = X[a : b - d]
                else:
                    if -d < b - a:
                        block[a : b + d] = X[a - d : b]
        return out

    def get_feature_names_out(self, input_features=None):
        p = getattr(self, "n_features_in_", None)
        names = input_features if input_features is not None else [f"x{j}" for j in range(p or 0)]
        return np.array([f"{n}_delay{d}" for d in self.delays for n in names], dtype=object)


def trim(x: np.ndarray, start: int = 5, end: int = 5) -> np.ndarray:
    """Drop ``start`` rows at the beginning and ``end`` rows at the end of a story."""
    x = np.asarray(x)
    if start < 0 or end < 0:
        raise ValidationError(f"trim amounts must be >= 0, got start={start}, end={end}")
    if start + end >= x.shape[0]:
        raise ValidationError(f"cannot trim {start}+{end} rows from an array of {x.shape[0]} rows")
    return x[start : x.shape[0] - end]


def zscore(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Z-score along ``axis`` (population std); constant columns become 0, not NaN."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=axis, keepdims=True)
    std = x.std(axis=axis, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    return (x - mean) / std


def zscore_per_story(x: np.ndarray, story_lengths: Sequence[int]) -> np.ndarray:
    """Z-score each story's block of rows separately (columns independently)."""
    x = np.asarray(x)
    bounds = story_bounds(story_lengths, x.shape[0])
    return np.concatenate([zscore(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:])], axis=0)


class StoryKFold:
    """Leave-stories-out K-fold: each fold holds out whole stories, never single TRs.

    Stories are dealt to folds in order (story ``i`` goes to fold ``i % n_splits``), or
    in a seeded random order with ``shuffle=True``; the same arguments always give the
    same folds. :meth:`split` yields (train, validation) TR indices into the stacked rows.
    """

    def __init__(self, n_splits: int = 5, shuffle: bool = False, random_state: int | None = 0):
        if int(n_splits) != n_splits or n_splits < 2:
            raise ValidationError(f"n_splits must be an integer >= 2, got {n_splits!r}")
        self.n_splits = int(n_splits)
        self.shuffle = shuffle
        self.random_state = random_state

    def fold_of_story(self, n_stories: int) -> np.ndarray:
        if n_stories < self.n_splits:
            raise ValidationError(
                f"n_splits={self.n_splits} needs at least as many training stories, got {n_stories}"
            )
        order = np.arange(n_stories)
        if self.shuffle:
            order = np.random.default_rng(self.random_state).permutation(n_stories)
        folds = np.empty(n_stories, dtype=np.int64)
        folds[order] = np.arange(n_stories) % self.n_splits
        return folds

    def split(self, story_lengths: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        bounds = story_bounds(story_lengths)
        folds = self.fold_of_story(len(bounds) - 1)
        story_of_row = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
        for k in range(self.n_splits):
            val = np.isin(story_of_row, np.flatnonzero(folds == k))
            yield np.flatnonzero(~val), np.flatnonzero(val)

    def get_n_splits(self, *args, **kwargs) -> int:
        return self.n_splits


def _rate(times: np.ndarray, tr_times: np.ndarray, tr: float, method: str, window: int) -> np.ndarray:
    if method == "lanczos":
        return lanczos_resample(np.ones(times.size), times, tr_times, window=window, tr=tr)
    if method == "count":
        edges = np.concatenate([tr_times - tr / 2, [tr_times[-1] + tr / 2]])
        return np.histogram(times, bins=edges)[0].astype(np.float64)
    raise ValidationError(f"method must be 'lanczos' or 'count', got {method!r}")


def word_rate(story: Story, method: str = "lanczos", window: int = 3) -> np.ndarray:
    """Words per TR on the story's TR grid (n_trs,).

    ``method="lanczos"`` resamples a 1 per word like every other feature (the reference
    pipeline's word-rate baseline); ``"count"`` counts word midpoints in each TR's bin.
    """
    return _rate(story.word_times, story.tr_times, story.tr, method, window)


def phoneme_rate(story: Story, method: str = "lanczos", window: int = 3) -> np.ndarray:
    """Phones per TR (n_trs,); needs a phone tier."""
    if story.phones is None or len(story.phones[0]) == 0:
        raise ValidationError(f"story {story.name!r} has no phone tier: phoneme rate is unavailable")
    _, on, off = story.phones
    return _rate(0.5 * (on + off), story.tr_times, story.tr, method, window)


def downsample_story(story: Story, values: np.ndarray, window: int = 3, matrix: sp.csr_matrix | None = None) -> np.ndarray:
    """Resample word-level ``values`` of ``story`` onto its TR grid (word midpoints)."""
    values = np.asarray(values)
    if values.shape[0] != story.n_words:
        raise ValidationError(f"story {story.name!r} has {story.n_words} words but values have {values.shape[0]} rows")
    if matrix is None:
        matrix = lanczos_matrix(story.word_times, story.tr_times, window=window, tr=story.tr)
    if not np.all(np.isfinite(values)):
        raise ValidationError(f"story {story.name!r}: word features contain NaN or inf")
    return np.asarray(matrix @ np.asarray(values, dtype=np.float64))


def words_after_scan(story: Story, window: int = 3) -> tuple[int, float]:
    """Words of ``story`` that reach no TR, and the time after which a word reaches none.

    Word features go to the TR grid through a ``window``-lobe Lanczos kernel, which is
    zero farther than ``window`` TRs from a TR time: a word (at its midpoint) later than
    ``tr_times[-1] + window * tr`` enters no row, its features are dropped.

    Returns
    -------
    n_late : int
        Words after that time.
    reach : float
        ``tr_times[-1] + window * tr``, seconds from sound onset.
    """
    reach = float(story.tr_times[-1] + window * story.tr)
    n_late = int(story.n_words - np.searchsorted(story.word_times, reach, side="right"))
    return n_late, reach


def check_words_in_scan(
    stories: Sequence[Story], window: int = 3, where: str = "", warn: bool = True
) -> dict[str, int]:
    """Refuse stories whose transcripts run well past their scans; warn about a few late words.

    A story fails when more than :data:`LATE_WORDS_FRACTION` of its words, spanning more
    than :data:`LATE_WORDS_SECONDS`, come after its scan (:func:`words_after_scan`):
    their features would be dropped silently, and such a transcript is usually not the
    one of these responses (a longer recording, another story, a wrong TR or onset).
    Fewer late words (the end of a story trimmed off with its last TRs) are logged as
    one warning.

    Parameters
    ----------
    stories : sequence of Story
    window : int
        Lanczos lobes of the resampling.
    where : str
        Prefix of the messages (a dataset's name).
    warn : bool
        Log the warning about a few late words (off where it was given already).

    Returns
    -------
    dict
        story name -> number of late words, for the stories that have some.

    Raises
    ------
    ValidationError
        Naming each failing story (and its transcript file) with the counts and times.
    """
    late, bad = {}, []
    for st in stories:
        n_late, reach = words_after_scan(st, window)
        if n_late == 0:
            continue
        late[st.name] = n_late
        end = float(st.word_times[-1])
        first_late = float(st.word_times[st.n_words - n_late])
        if n_late > LATE_WORDS_FRACTION * st.n_words and end - first_late > LATE_WORDS_SECONDS:
            src = f" ({st.source})" if st.source else ""
            bad.append(
                f"story {st.name!r}{src}: {n_late} of its {st.n_words} words ({100 * n_late / st.n_words:.0f}%) "
                f"come after the scan: the transcript ends at {end:.1f} s but the last of its {st.n_trs} TRs is at "
                f"{float(st.tr_times[-1]):.1f} s, and words after {reach:.1f} s reach no TR"
            )
    prefix = f"{where}: " if where else ""
    if bad:
        raise ValidationError(
            prefix + "; ".join(bad) + ". Is this the transcript of these responses (and are the TR and onset right)?"
        )
    if late and warn:
        log.warning(
            "%swords after the end of the scan reach no TR and are left out of the features: %s",
            prefix, ", ".join(f"{n} of {k!r}" for k, n in late.items()),
        )
    return late
