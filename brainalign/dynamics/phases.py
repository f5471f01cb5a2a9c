"""Phase transitions in curves over training: broken-stick and logistic-step models
in log training progress, chosen by BIC, with bootstrap intervals and a test behind
every claimed rise, fall and transition.

The models
----------
A curve ``y(x)`` over checkpoints is fitted in ``u = log10(x)`` by one of:

* a constant (no change at all);
* a *continuous piecewise-linear* function (a "broken stick": an intercept, a first
  slope and one slope change per breakpoint), for curves that change slope at kinks;
* a *sum of logistic steps*, ``base + sum_j amp_j / (1 + exp(-(u - mid_j) / width_j))``
  with one or two steps, for s-shaped transitions.  A broken stick fits an s-shaped
  step with two kinks at its knees (about ``mid +- 2 width``) and no breakpoint at its
  midpoint; the logistic model reports the midpoint, the width and the amplitude.

Broken sticks are fitted as before: an exact dynamic programme over segmentations into
independent lines (closed-form segment costs; :func:`_dp_segment` is checked against
ruptures' ``Dynp`` in the tests) seeds a coordinate-descent search of the continuous
model over a fine grid of breakpoint positions.  Logistic steps are fitted by nonlinear
least squares (``scipy.optimize.least_squares``, trust-region reflective, analytic
Jacobian) from the best points of a grid of midpoints x widths, on which the base and
amplitudes are solved in closed form (variable projection).  Bounds: widths from a
quarter of the median checkpoint spacing to a quarter of the range; each step's span
``mid +- 2 width`` (12% to 88% of its rise) inside the data, with at least one
checkpoint beyond its midpoint on either side -- a step whose plateau is not observed
has no identifiable amplitude, and is a bend, which the broken stick describes.

Model choice
------------
All models are compared by BIC, ``n log(RSS/n) + p log n``, on the same ``n``.
Parameters are counted alike in both families: each linear coefficient and each width
counts one, and each *location* (a breakpoint or a midpoint) counts three, because it
is searched over (with one, plain BIC adds spurious transitions to ~10% of noisy
curves; cf. the modified BIC for change points, Zhang & Siegmund 2007).  The constant
has ``p = 1``, a broken stick with ``k`` segments ``p = (k + 1) + 3 (k - 1)``, ``m``
logistic steps ``p = 1 + 5 m``.  Among the models within 2 of the lowest BIC (a
difference "not worth more than a bare mention", Kass & Raftery 1995) the one with the
fewest transitions, then parameters, is taken: a change must be worth more than a bare
mention to be entertained.

Tests (what backs a claim)
--------------------------
A segment is called rising or falling only when the change of the fitted model between
its ends is significant; a transition is kept only when the change it marks (a step's
amplitude, a breakpoint's change of slope) is significant.  Both are contrasts of the
linear coefficients given the fitted transition times, tested by

* a t-test against the residual noise of the mean curve, its sample size reduced for
  the lag-1 autocorrelation of the residuals (Santer et al. 2000), always -- for the
  segments of a broken stick a profile F-test instead, the breakpoints refitted with
  the segment's slope held at zero (testing at the breakpoints that fit best
  exaggerates the change of a plateau: a plateau between two rises was called a fall
  in 7.5% of 200 noisy curves); and
* with three or more subjects, also a paired t-test across subjects: each subject's
  curve is refitted with the transition times and widths fixed and the per-subject
  contrasts are tested against zero (``df = n_subjects - 1``).

A claim needs every test to give ``p < alpha`` (the reported p is the largest), and,
when the bootstrap ran, the bootstrap interval of the change to exclude zero.  When a
transition fails, the best model with fewer transitions is taken instead; when no
segment is left rising or falling, the curve is one flat segment with no transition;
when the constant is chosen, the straight line is shown with its test but not claimed.
The plateaus of a logistic model are flat by construction.  "rise -> fall -> rise" is
named only from such significant parts.  With ``significant=False`` (the caller's test
found no alignment in the region) nothing is claimed at all.

Measured with the defaults on synthetic curves (40 checkpoints, 1e6-1e10 tokens; the
cases of tests/test_dynamics_phase_claims.py): pure iid noise gets a rise or fall in
3% (one curve) and 1% (three subjects) of 300 curves, a transition in 1 of 600; a
plateau between two rises is called a fall in 3% of 200; logistic steps are placed
within 0.1 decade in 119 of 120 curves where the data allow it (Cramér-Rao bound on
the midpoint <= 0.05 decade); piecewise-linear curves keep their segments and
breakpoints in 88 of 90.  Limits: one curve with autocorrelated noise (AR(1),
phi = 0.5) still gets a rise or fall in 13% and a transition in 7% of 100 curves
(three subjects: 2%); the paired test holds the transition times at those fitted to
the mean curve, so it shares their selection.

Intervals
---------
Percentile intervals from refitting the chosen model (its number of segments or steps
fixed) to bootstrap resamples: with three or more subjects, subjects are resampled with
replacement and the mean curve refitted; otherwise a moving-block bootstrap of the
residuals around the fit.  Every transition time, step width and amplitude, slope change
and segment change gets one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import linalg, optimize, special, stats

from ..errors import ValidationError

log = logging.getLogger(__name__)

__all__ = ["detect_phases", "PhaseResult", "Segment", "Transition"]

_WORD = {"rising": "rise", "falling": "fall", "flat": "flat"}
_ARROW = "\u2192"
#: a location (breakpoint or midpoint) is searched over, so it costs more than a linear
#: coefficient.  Three was calibrated on synthetic curves (tests/test_dynamics_phases.py):
#: a straight noisy line then gives a spurious transition in ~1% of cases.
_BREAKPOINT_PARAMS = 3
#: fewest subjects for the paired test and the subject bootstrap (with two, a t-test
#: has one degree of freedom and a bootstrap three distinct resamples)
_MIN_SUBJECTS = 3
_NAN2 = (np.nan, np.nan)
#: BIC differences below 2 are "not worth more than a bare mention" (Kass & Raftery
#: 1995): among models that close to the best, the one with fewest transitions is taken
_BIC_MARGIN = 2.0
#: evaluations allowed to a logistic fit: a well-posed step converges in ~10; on a curve
#: that is no step (a tent) two opposite steps drift for hundreds of evaluations while
#: the RSS changes in the fourth digit
_MAX_NFEV = 60
_PLATEAU = "not tested: a plateau of the logistic model (its change is the tails of the neighbouring steps)"


@dataclass(frozen=True)
class Segment:
    """One phase of the fit.

    Attributes
    ----------
    start, end : float
        Bounds in x units.
    slope, se : float
        Mean slope over the segment (change / length, per log10 unit of x) and its
        standard error from the residual test.
    t, p : float
        Statistic and p-value of the test of the change (the largest p when two tests
        ran; see ``test``).
    label : {"rising", "falling", "flat"}
    change : float
        Fitted value at ``end`` minus fitted value at ``start``.
    change_interval : (float, float)
        Bootstrap percentile interval of ``change`` (NaN without bootstrap).
    test : str
        The test(s) behind the label, in words.
    kind : {"linear", "step", "plateau"}
        A broken-stick piece, or the span of a logistic step (``mid +- 2 width``) or
        the plateau between steps.
    note : str
        Why the segment is flat whatever its test says (a constant fits as well).
    """

    start: float
    end: float
    slope: float
    se: float
    t: float
    p: float
    label: str
    change: float = np.nan
    change_interval: tuple[float, float] = _NAN2
    test: str = ""
    kind: str = "linear"
    note: str = ""


@dataclass(frozen=True)
class Transition:
    """One transition: a logistic step's midpoint or a broken stick's breakpoint.

    Attributes
    ----------
    kind : {"step", "breakpoint"}
    at, log_at : float
        The transition time in x units and on the fitting axis (log10 x).
    log_interval : (float, float)
        Bootstrap interval of ``log_at``.
    change, change_interval : float, (float, float)
        A step's amplitude, or a breakpoint's change of slope (per log10 unit), with
        its bootstrap interval.
    width, width_interval : float, (float, float)
        A step's width on the fitting axis (decades; NaN for breakpoints).
    before, after : str
        Labels of the phases on either side ("" where a step's span reaches the end
        of the data).
    t, p, test : float, float, str
        The test that the change is not zero.
    direction : str
        A step's own phase, ``"rising"`` or ``"falling"`` ("" for a breakpoint).
    """

    kind: str
    at: float
    log_at: float
    log_interval: tuple[float, float]
    change: float
    change_interval: tuple[float, float]
    width: float = np.nan
    width_interval: tuple[float, float] = _NAN2
    before: str = ""
    after: str = ""
    t: float = np.nan
    p: float = np.nan
    test: str = ""
    log_x: bool = True
    direction: str = ""

    def _to_x(self, v):
        return 10.0 ** np.asarray(v, dtype=float) if self.log_x else np.asarray(v, dtype=float)

    @property
    def interval(self) -> tuple[float, float]:
        """``log_interval`` in x units."""
        lo, hi = self._to_x(self.log_interval)
        return float(lo), float(hi)

    @property
    def mid(self) -> float:
        """A step's midpoint in x units (same as ``at``)."""
        return self.at

    @property
    def amp(self) -> float:
        """A step's amplitude (NaN for a breakpoint)."""
        return self.change if self.kind == "step" else np.nan

    @property
    def amp_interval(self) -> tuple[float, float]:
        return self.change_interval if self.kind == "step" else _NAN2

    @property
    def label(self) -> str:
        """The phases around the transition: ``"rising→falling"`` at a breakpoint,
        ``"flat→rising→flat"`` across a step (ends outside the data left out)."""
        parts = [self.before, self.direction, self.after] if self.kind == "step" else [self.before, self.after]
        return _ARROW.join(p for p in parts if p)


@dataclass
class PhaseResult:
    """Phases of one curve.

    Attributes
    ----------
    x, y : ndarray
        The checkpoints used (x in the original units, sorted) and the fitted curve
        (mean over subjects when there were several).
    fitted : ndarray
        The chosen model at ``x``.
    breakpoints : ndarray
        Transition times in x units: breakpoints of a broken stick
        (``n_segments - 1`` of them) or midpoints of logistic steps.
    log_breakpoints : ndarray
        The same in the fitting axis (log10 x when ``log_x``).
    intervals, log_intervals : ndarray, shape (n_transitions, 2)
        Bootstrap percentile intervals of the transition times (NaN without bootstrap).
    segments : list of Segment
        The phases; empty when ``significant`` is False.
    bic : dict
        BIC of each number of broken-stick segments tried (``bic_models``: every model).
    model : {"broken_stick", "logistic"}
    transitions : list of Transition
    significant : bool or None
        The caller's verdict on the region's alignment (None: not given).
    tests, bootstrap : str
        The test scheme and the bootstrap scheme, in words.
    """

    x: np.ndarray
    y: np.ndarray
    fitted: np.ndarray
    breakpoints: np.ndarray
    log_breakpoints: np.ndarray
    intervals: np.ndarray
    log_intervals: np.ndarray
    segments: list[Segment]
    bic: dict[int, float]
    log_x: bool = True
    x_name: str = "tokens"
    name: str | None = None
    level: float = 0.95
    boot_breakpoints: np.ndarray | None = field(default=None, repr=False)
    model: str = "broken_stick"
    transitions: list[Transition] = field(default_factory=list)
    bic_models: dict[str, float] = field(default_factory=dict)
    significant: bool | None = None
    alpha: float = 0.05
    tests: str = ""
    bootstrap: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def n_segments(self) -> int:
        return len(self.segments)

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.segments]

    @property
    def pattern(self) -> str:
        """Segment labels as words joined by arrows, e.g. ``"rise→fall→rise"``;
        ``"no significant alignment"`` when the caller said so."""
        if self.significant is False:
            return "no significant alignment"
        return _ARROW.join(_WORD[lab] for lab in self.labels)

    @property
    def three_phase(self) -> bool:
        """True when the significant segments show rise → fall → rise (flat pieces
        ignored, repeated labels merged)."""
        seq: list[str] = []
        for lab in self.labels:
            if lab != "flat" and (not seq or seq[-1] != lab):
                seq.append(lab)
        return "rising,falling,rising" in ",".join(seq)

    def summary(self) -> str:
        """The pattern, each transition and each segment with its interval and its
        test, and whether the three-phase rise → fall → rise account fits."""
        return _summary(self)

    def __str__(self) -> str:
        return self.summary()

    def to_frame(self):
        """One row per segment: bounds, change with interval, slope, test and label; the
        transition that ends the segment (broken stick) or lies in it (logistic step)
        with its interval (pandas DataFrame)."""
        return _segments_frame(self)

    def transitions_frame(self):
        """One row per transition: time with interval, width and change with intervals,
        the phases around it and its test (pandas DataFrame)."""
        import pandas as pd

        rows = [
            {
                "curve": self.name, "transition": i + 1, "kind": tr.kind, "at": tr.at,
                "lo": tr.interval[0], "hi": tr.interval[1], "log_at": tr.log_at,
                "width": tr.width, "width_lo": tr.width_interval[0], "width_hi": tr.width_interval[1],
                "change": tr.change, "change_lo": tr.change_interval[0], "change_hi": tr.change_interval[1],
                "before": tr.before, "after": tr.after, "t": tr.t, "p": tr.p, "test": tr.test,
            }
            for i, tr in enumerate(self.transitions)
        ]
        cols = ["curve", "transition", "kind", "at", "lo", "hi", "log_at", "width", "width_lo", "width_hi",
                "change", "change_lo", "change_hi", "before", "after", "t", "p", "test"]
        return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- text


def _g(v: float) -> str:
    return f"{v:.3g}"


def _ci(iv: tuple[float, float], pct: int, fmt=_g) -> str:
    lo, hi = iv
    return f", {pct}% CI {fmt(lo)} to {fmt(hi)}" if np.isfinite(lo) and np.isfinite(hi) else ""


def _summary(r: PhaseResult) -> str:
    """Text of :meth:`PhaseResult.summary`."""
    what = f"{r.name}: " if r.name else ""
    axis = f"log10 {r.x_name}" if r.log_x else r.x_name
    span = f"{len(r.x)} checkpoints ({r.x_name} {_g(r.x[0])} to {_g(r.x[-1])})"
    if r.significant is False:
        return (f"{what}no significant alignment (the caller's test) over {span}: no phase is claimed.")
    kind = {"broken_stick": "piecewise-linear", "logistic": "logistic step(s)"}[r.model]
    lines = [f"{what}{r.n_segments} segment(s) over {span}, {kind} model chosen by BIC: {r.pattern}"]
    if not r.transitions:
        lines.append("No phase transition: one segment fits best (BIC) or no change passed its test.")
    pct = int(round(r.level * 100))
    for i, tr in enumerate(r.transitions):
        where = f"{axis} {tr.log_at:.2f}{_ci(tr.log_interval, pct, '{:.2f}'.format)}"
        head = f"  transition {i + 1} at {r.x_name} = {_g(tr.at)} ({where})"
        if tr.kind == "step":
            body = (f"s-shaped {_WORD.get(tr.direction, tr.direction)} ({tr.label}), width {tr.width:.2f} "
                    f"{'decades' if r.log_x else 'units'}{_ci(tr.width_interval, pct, '{:.2f}'.format)}, "
                    f"amplitude {tr.change:+.3g}{_ci(tr.change_interval, pct)}")
        else:
            body = (f"{tr.before}{_ARROW}{tr.after}, slope change {tr.change:+.3g} per "
                    f"{'decade' if r.log_x else 'unit'}{_ci(tr.change_interval, pct)}")
        lines.append(f"{head}: {body}; {tr.test}: p = {tr.p:.2g}")
    for s in r.segments:
        head = f"  {s.label:8s} {_g(s.start)} to {_g(s.end)}: change {s.change:+.3g}{_ci(s.change_interval, pct)}"
        if s.kind == "plateau":
            lines.append(f"{head}; {s.test}")
            continue
        if s.note:
            verdict = s.note
        elif s.label == "flat":
            verdict = f"not significant at alpha = {r.alpha:g}"
        else:
            verdict = f"significant at alpha = {r.alpha:g}"
        lines.append(
            f"{head} (slope {s.slope:+.3g} per {'decade' if r.log_x else 'unit'}); {s.test}: t = {s.t:.2f}, "
            f"p = {s.p:.2g}, {verdict}"
        )
    lines.append(f"Tests: {r.tests}. Intervals: {r.bootstrap}.")
    lines.extend(r.notes)
    if r.three_phase:
        lines.append("The three-phase pattern (rise \u2192 fall \u2192 rise) is present, each part significant.")
    else:
        lines.append(f"The three-phase pattern (rise \u2192 fall \u2192 rise) is not present (found {r.pattern}).")
    return "\n".join(lines)


def _segments_frame(r: PhaseResult):
    """Table of :meth:`PhaseResult.to_frame`."""
    import pandas as pd

    rows = []
    steps = iter(r.transitions) if r.model == "logistic" else None
    for i, s in enumerate(r.segments):
        tr = None
        if steps is not None and s.kind == "step":
            tr = next(steps, None)
        elif steps is None and i < len(r.transitions):
            tr = r.transitions[i]
        rows.append({
            "curve": r.name, "model": r.model, "segment": i, "kind": s.kind, "start": s.start, "end": s.end,
            "change": s.change, "change_lo": s.change_interval[0], "change_hi": s.change_interval[1],
            "slope": s.slope, "se": s.se, "t": s.t, "p": s.p, "label": s.label, "test": s.test,
            "breakpoint": tr.at if tr else np.nan,
            "breakpoint_lo": tr.interval[0] if tr else np.nan,
            "breakpoint_hi": tr.interval[1] if tr else np.nan,
            "width": tr.width if tr else np.nan,
            "amp": tr.amp if tr else np.nan,
        })
    cols = ["curve", "model", "segment", "kind", "start", "end", "change", "change_lo", "change_hi", "slope", "se",
            "t", "p", "label", "test", "breakpoint", "breakpoint_lo", "breakpoint_hi", "width", "amp"]
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- broken stick


def _segment_costs(u: np.ndarray, Y: np.ndarray, min_size: int) -> np.ndarray:
    """RSS of an OLS line on every piece [i, j) (summed over the columns of Y);
    ``inf`` for pieces shorter than ``min_size``.  Closed form from prefix sums."""
    n = len(u)
    u = u - u.mean()
    Y = Y - Y.mean(axis=0)
    z = np.zeros(1)
    c1 = np.concatenate([z, np.cumsum(np.ones(n))])
    cu = np.concatenate([z, np.cumsum(u)])
    cuu = np.concatenate([z, np.cumsum(u * u)])
    cy = np.vstack([np.zeros((1, Y.shape[1])), np.cumsum(Y, axis=0)])
    cuy = np.vstack([np.zeros((1, Y.shape[1])), np.cumsum(u[:, None] * Y, axis=0)])
    cyy = np.vstack([np.zeros((1, Y.shape[1])), np.cumsum(Y * Y, axis=0)])
    i, j = np.triu_indices(n + 1, 1)
    m = c1[j] - c1[i]
    su, suu = cu[j] - cu[i], cuu[j] - cuu[i]
    sy, suy, syy = cy[j] - cy[i], cuy[j] - cuy[i], cyy[j] - cyy[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        vu = suu - su**2 / m
        cyy_c = syy - sy**2 / m[:, None]
        cuy_c = suy - su[:, None] * sy / m[:, None]
        rss = cyy_c - np.where(vu[:, None] > 1e-300, cuy_c**2 / vu[:, None], 0.0)
    rss = np.maximum(rss.sum(axis=1), 0.0)
    cost = np.full((n + 1, n + 1), np.inf)
    cost[i, j] = np.where(m >= min_size, rss, np.inf)
    return cost


def _dp_segment(cost: np.ndarray, k: int) -> tuple[float, list[int]]:
    """Exact optimal partition of [0, n) into ``k`` pieces given piece costs.
    Returns the total cost and the end index of each piece but the last."""
    n = cost.shape[0] - 1
    F = np.full((k + 1, n + 1), np.inf)
    arg = np.zeros((k + 1, n + 1), dtype=int)
    F[0, 0] = 0.0
    for kk in range(1, k + 1):
        tot = F[kk - 1][:, None] + cost  # (i, j): best for [0, i) in kk-1 pieces + piece [i, j)
        arg[kk] = np.argmin(tot, axis=0)
        F[kk] = tot[arg[kk], np.arange(n + 1)]
    if not np.isfinite(F[k, n]):
        return np.inf, []
    ends, j = [], n
    for kk in range(k, 0, -1):
        j = int(arg[kk, j])
        ends.append(j)
    return float(F[k, n]), sorted(ends)[1:]


def _hinge_design(u: np.ndarray, bps: np.ndarray) -> np.ndarray:
    """(..., n, 2 + m) design: 1, u, (u - b_1)+, ..., for breakpoints of shape (..., m)."""
    bps = np.asarray(bps, dtype=float)
    lead = bps.shape[:-1]
    ones = np.broadcast_to(np.ones_like(u), lead + u.shape)
    uu = np.broadcast_to(u, lead + u.shape)
    hinges = np.maximum(u[..., :, None] - bps[..., None, :], 0.0) if bps.shape[-1] else np.zeros(lead + u.shape + (0,))
    return np.concatenate([ones[..., None], uu[..., None], hinges], axis=-1)


def _batched_rss(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Least-squares RSS (summed over columns of Y) for a batch of designs X (G, n, p)."""
    Xt = np.swapaxes(X, -1, -2)
    G = Xt @ X
    ridge = 1e-10 * np.trace(G, axis1=-2, axis2=-1)[..., None, None] * np.eye(G.shape[-1])
    beta = np.linalg.solve(G + ridge, Xt @ Y)  # (G, p, c)
    r = Y - X @ beta
    return np.einsum("gnc,gnc->g", r, r)


def _refine_continuous(u: np.ndarray, Y: np.ndarray, bps: np.ndarray, grid: np.ndarray, n_sweeps: int = 6,
                       N: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Coordinate descent of the continuous (hinge) model's breakpoints over ``grid``;
    each segment keeps at least two checkpoints.  With ``N`` (p, p - r), the
    coefficients are constrained to ``beta = N gamma`` (a linear constraint)."""
    def design(B):
        X = _hinge_design(u, B)
        return X if N is None else X @ N

    bps = np.sort(np.asarray(bps, dtype=float))
    m = len(bps)
    best = float(_batched_rss(design(bps[None]), Y)[0])
    if m == 0:
        return bps, best
    for _ in range(n_sweeps):
        changed = False
        for q in range(m):
            lo = bps[q - 1] if q > 0 else -np.inf
            hi = bps[q + 1] if q < m - 1 else np.inf
            # at least 2 data points strictly inside each neighbouring segment
            left_pts = u[u > lo]
            right_pts = u[u < hi]
            if len(left_pts) < 2 or len(right_pts) < 2:
                continue
            cand = grid[(grid > left_pts[1]) & (grid < right_pts[-2])]
            cand = cand[(cand > lo) & (cand < hi)]
            if len(cand) == 0:
                continue
            B = np.repeat(bps[None], len(cand), axis=0)
            B[:, q] = cand
            rss = _batched_rss(design(B), Y)
            g = int(np.argmin(rss))
            if rss[g] < best - 1e-12 * max(best, 1e-300):
                best = float(rss[g])
                changed = changed or cand[g] != bps[q]
                bps[q] = cand[g]
        if not changed:
            break
    return bps, best


def _fit_k(u: np.ndarray, Y: np.ndarray, k: int, min_size: int, continuous: bool, grid: np.ndarray, cost: np.ndarray | None = None):
    """Best k-segment fit: breakpoints (fitting axis) and RSS (summed over columns)."""
    if cost is None:
        cost = _segment_costs(u, Y, min_size)
    rss, ends = _dp_segment(cost, k)
    if not np.isfinite(rss):
        return None, np.inf
    bps = np.array([(u[e - 1] + u[e]) / 2 for e in ends])
    if continuous and k > 1:
        bps, rss = _refine_continuous(u, Y, bps, grid)
    elif continuous:
        rss = float(_batched_rss(_hinge_design(u, np.zeros((1, 0))), Y)[0])
    return bps, rss


def _grid(u: np.ndarray, per_gap: int = 8) -> np.ndarray:
    """Candidate breakpoint positions: ``per_gap`` steps between neighbouring checkpoints."""
    f = np.linspace(0, 1, per_gap, endpoint=False)
    return np.concatenate([u[:-1, None] + f[None] * np.diff(u)[:, None]]).ravel()


def _block_resample(resid: np.ndarray, block: int, rng: np.random.Generator) -> np.ndarray:
    """Moving-block bootstrap of a residual series (keeps short-range correlation)."""
    n = len(resid)
    block = max(1, min(int(block), n))
    starts = rng.integers(0, n - block + 1, int(np.ceil(n / block)))
    return np.concatenate([resid[s : s + block] for s in starts])[:n]


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class _Data:
    """A curve ready to fit: the axis, the subjects' values and the search settings."""

    u: np.ndarray  # fitting axis, sorted
    Y: np.ndarray  # (n, n_subjects), NaN where a subject lacks a checkpoint
    y: np.ndarray  # mean curve
    min_size: int
    continuous: bool
    grid: np.ndarray  # breakpoint candidates
    mid_bounds: tuple[float, float]
    lw_bounds: tuple[float, float]  # log10 width

    @property
    def n(self) -> int:
        return len(self.u)

    @property
    def n_subj(self) -> int:
        return self.Y.shape[1]


@dataclass
class _Fit:
    """A fitted model: its family, size, nonlinear parameters and linear coefficients.

    ``theta`` holds the breakpoints of a broken stick (``k - 1``), or the midpoints then
    the log10 widths of ``k`` logistic steps (sorted by midpoint).
    """

    kind: str  # "constant" | "broken_stick" | "logistic"
    k: int  # segments, or steps (1 for the constant)
    theta: np.ndarray
    beta: np.ndarray
    rss: float
    continuous: bool = True
    bic: float = np.nan

    @property
    def n_transitions(self) -> int:
        return {"broken_stick": self.k - 1, "logistic": self.k}.get(self.kind, 0)

    @property
    def key(self) -> str:
        return "constant" if self.kind == "constant" else f"{self.kind}_{self.k}"

    @property
    def n_free(self) -> int:
        """Fitted parameters (coefficients + locations + widths), for degrees of freedom."""
        if self.kind == "constant":
            return 1
        if self.kind == "logistic":
            return 1 + 3 * self.k
        return (self.k + 1 if self.continuous else 2 * self.k) + (self.k - 1)

    @property
    def n_bic(self) -> int:
        """Parameters counted by the criterion: a searched location counts three."""
        if self.kind == "constant":
            return 1
        if self.kind == "logistic":
            return 1 + self.k * (2 + _BREAKPOINT_PARAMS)
        coef = self.k + 1 if self.continuous else 2 * self.k
        return coef + _BREAKPOINT_PARAMS * (self.k - 1)

    @property
    def mids(self) -> np.ndarray:
        return self.theta[: self.k] if self.kind == "logistic" else self.theta

    @property
    def widths(self) -> np.ndarray:
        return 10.0 ** self.theta[self.k :] if self.kind == "logistic" else np.full(len(self.theta), np.nan)


def _design(kind: str, u: np.ndarray, theta: np.ndarray, continuous: bool = True) -> np.ndarray:
    """Linear design of a model at ``u`` given its nonlinear parameters ``theta``:
    ``1, u, hinges`` (continuous broken stick), ``1_q, u 1_q`` per segment
    (discontinuous) or ``1, sigmoid_1, ...`` (logistic steps)."""
    u = np.asarray(u, dtype=float)
    if kind == "logistic":
        m = len(theta) // 2
        z = (u[:, None] - theta[None, :m]) / 10.0 ** theta[None, m:]
        return np.column_stack([np.ones(len(u)), special.expit(z)])
    if continuous:
        return _hinge_design(u, np.asarray(theta, dtype=float)[None])[0]
    seg = np.searchsorted(theta, u)
    X = np.zeros((len(u), 2 * (len(theta) + 1)))
    X[np.arange(len(u)), 2 * seg] = 1.0
    X[np.arange(len(u)), 2 * seg + 1] = u
    return X


def _ols(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    r = y - X @ beta
    return beta, float(r @ r)


def _fit_broken_stick(d: _Data, y: np.ndarray, k: int, cost: np.ndarray | None = None) -> _Fit | None:
    """Best ``k``-segment broken stick of ``y``."""
    bps = np.zeros(0) if k == 1 else _fit_k(d.u, y[:, None], k, d.min_size, d.continuous, d.grid, cost)[0]
    if bps is None:
        return None
    beta, rss = _ols(_design("broken_stick", d.u, bps, d.continuous), y)
    return _Fit("broken_stick", k, np.asarray(bps, dtype=float), beta, rss, d.continuous)


def _mid_limits(d: _Data, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where a step of width ``w`` may sit: its span ``mid +- 2 w`` within the data and
    at least one checkpoint on either side of its midpoint.  Returns the limits and
    their derivatives in ``w``."""
    lo_a, hi_a = d.u[0] + 2 * w, d.u[-1] - 2 * w
    lo = np.maximum(lo_a, d.mid_bounds[0])
    hi = np.minimum(hi_a, d.mid_bounds[1])
    return lo, hi, np.where(lo_a > d.mid_bounds[0], 2.0, 0.0), np.where(hi_a < d.mid_bounds[1], -2.0, 0.0)


def _logistic_grid(d: _Data) -> tuple[np.ndarray, np.ndarray]:
    """Starting (midpoint, log10 width) pairs for the profile search: checkpoints and
    the middles between them x 7 widths, where the step fits in the data."""
    u = d.u
    mids = np.sort(np.concatenate([u, (u[:-1] + u[1:]) / 2]))
    mm, ww = (a.ravel() for a in np.meshgrid(mids, np.linspace(*d.lw_bounds, 7), indexing="ij"))
    lo, hi, _, _ = _mid_limits(d, 10.0**ww)
    ok = (mm >= lo) & (mm <= hi)
    return mm[ok], ww[ok]


def _logistic_starts(d: _Data, y: np.ndarray, m: int, n_starts: int = 1) -> list[np.ndarray]:
    """Best (midpoints, log10 widths) on a grid by the profile RSS (base and amplitudes
    solved in closed form for every grid point), vectorised over the grid."""
    mm, ww = _logistic_grid(d)
    if len(mm) == 0:
        return []
    B = special.expit((d.u[None] - mm[:, None]) / 10.0 ** ww[:, None])
    B = B - B.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    z, g = B @ yc, np.einsum("mn,mn->m", B, B)
    if m == 1:
        gain = np.where(g > 1e-12, z**2 / np.maximum(g, 1e-300), 0.0)
        best = np.argsort(-gain)[:n_starts]
        return [np.array([mm[i], ww[i]]) for i in best]
    G = B @ B.T
    gp, gq = g[:, None], g[None, :]
    det = gp * gq - G**2
    ok = (mm[:, None] < mm[None, :]) & (det > 1e-9 * gp * gq)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = (gq * z[:, None] ** 2 - 2 * G * z[:, None] * z[None, :] + gp * z[None, :] ** 2) / det
    gain = np.where(ok, gain, -np.inf).ravel()
    top = np.argpartition(-gain, n_starts)[:n_starts]
    p, q = np.unravel_index(top[np.argsort(-gain[top])], (len(mm), len(mm)))
    return [np.array([mm[a], mm[b], ww[a], ww[b]]) for a, b in zip(p, q) if np.isfinite(gain[a * len(mm) + b])]


def _to_mid(d: _Data, f: np.ndarray, lw: np.ndarray) -> np.ndarray:
    lo, hi, _, _ = _mid_limits(d, 10.0**lw)
    return lo + f * (hi - lo)


def _to_f(d: _Data, mid: np.ndarray, lw: np.ndarray) -> np.ndarray:
    lo, hi, _, _ = _mid_limits(d, 10.0**lw)
    return np.clip((mid - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)


def _logistic_residual(p: np.ndarray, d: _Data, y: np.ndarray, m: int) -> np.ndarray:
    """Residual of ``m`` logistic steps, parameters ``(base, amps, f, log10 widths)``
    where ``f`` in [0, 1] places each midpoint between its limits (:func:`_mid_limits`)."""
    lw = p[1 + 2 * m :]
    z = (d.u[:, None] - _to_mid(d, p[1 + m : 1 + 2 * m], lw)) / 10.0**lw
    return p[0] + special.expit(z) @ p[1 : 1 + m] - y


def _logistic_jacobian(p: np.ndarray, d: _Data, y: np.ndarray, m: int) -> np.ndarray:
    """Analytic Jacobian of :func:`_logistic_residual` (chain rule through the limits)."""
    amps, f, lw = p[1 : 1 + m], p[1 + m : 1 + 2 * m], p[1 + 2 * m :]
    w = 10.0**lw
    lo, hi, dlo, dhi = _mid_limits(d, w)
    z = (d.u[:, None] - (lo + f * (hi - lo))) / w
    S = special.expit(z)
    d_mid = -amps * S * (1 - S) / w  # d r / d mid
    d_w = d_mid * z + d_mid * (dlo + f * (dhi - dlo))  # direct + through the midpoint's limits
    return np.column_stack([np.ones(len(d.u)), S, d_mid * (hi - lo), d_w * w * np.log(10.0)])


def _fit_logistic(d: _Data, y: np.ndarray, m: int, starts: list[np.ndarray] | None = None) -> _Fit | None:
    """``m`` logistic steps fitted by nonlinear least squares (scipy ``least_squares``,
    trust-region reflective with the analytic Jacobian and box bounds on the placement
    and log10 width of each step) from each start (midpoints, log10 widths); the best
    is kept.  None when no step fits in the data."""
    starts = _logistic_starts(d, y, m) if starts is None else starts
    lo = np.r_[np.full(1 + m, -np.inf), np.zeros(m), np.full(m, d.lw_bounds[0])]
    hi = np.r_[np.full(1 + m, np.inf), np.ones(m), np.full(m, d.lw_bounds[1])]
    pad = 1e-9 * (hi[1 + m :] - lo[1 + m :])
    best = None
    for th0 in starts:
        lw0 = np.clip(th0[m:], d.lw_bounds[0], d.lw_bounds[1])
        x0 = np.clip(np.r_[_to_f(d, th0[:m], lw0), lw0], lo[1 + m :] + pad, hi[1 + m :] - pad)
        beta0, _ = _ols(_design("logistic", d.u, np.r_[_to_mid(d, x0[:m], x0[m:]), x0[m:]]), y)
        sol = optimize.least_squares(_logistic_residual, np.r_[beta0, x0], jac=_logistic_jacobian,
                                     bounds=(lo, hi), args=(d, y, m), method="trf",
                                     max_nfev=_MAX_NFEV)
        if best is None or sol.cost < best.cost:
            best = sol
    if best is None:
        return None
    lw = best.x[1 + 2 * m :]
    mids = _to_mid(d, best.x[1 + m : 1 + 2 * m], lw)
    order = np.argsort(mids)
    theta = np.r_[mids[order], lw[order]]
    beta, rss = _ols(_design("logistic", d.u, theta), y)
    return _Fit("logistic", m, theta, beta, rss)


def _refit(fit: _Fit, d: _Data, y: np.ndarray) -> _Fit | None:
    """The same model (family and size) fitted to another curve (a bootstrap resample);
    logistic steps start from ``fit``'s parameters."""
    if fit.kind == "logistic":
        return _fit_logistic(d, y, fit.k, starts=[fit.theta])
    return _fit_broken_stick(d, y, fit.k)


def _candidates(d: _Data, pen: float, max_segments: int, max_steps: int) -> list[_Fit]:
    """Every model tried, each with its BIC."""
    y = d.y
    cost = _segment_costs(d.u, y[:, None], d.min_size)
    fits = [_Fit("constant", 1, np.zeros(0), np.array([y.mean()]), float(np.sum((y - y.mean()) ** 2)))]
    for k in range(1, min(int(max_segments), d.n // d.min_size) + 1):
        f = _fit_broken_stick(d, y, k, cost)
        if f is not None:
            fits.append(f)
    for m in range(1, int(max_steps) + 1):
        f = _fit_logistic(d, y, m) if d.n >= 2 * (1 + 3 * m) else None
        if f is not None:
            fits.append(f)
    floor = 1e-12 * d.n * (np.var(y) + 1e-30)
    for f in fits:
        f.bic = float(d.n * np.log(max(f.rss, floor) / d.n) + pen * f.n_bic)
    return fits


# --------------------------------------------------------------------------- phases and tests


def _merge_short_plateaus(edges: list[float], kinds: list[str], u: np.ndarray, min_pts: int = 2):
    """A plateau holding fewer than ``min_pts`` checkpoints joins the step next to it."""
    q = 0
    while q < len(kinds):
        inside = int(np.sum((u >= edges[q]) & (u <= edges[q + 1])))
        if kinds[q] == "plateau" and len(kinds) > 1 and inside < min_pts:
            del edges[q if q > 0 else q + 1]  # into the step on the left, else on the right
            del kinds[q]
            continue
        q += 1
    return np.asarray(edges, dtype=float), kinds


def _edges(fit: _Fit, d: _Data) -> tuple[np.ndarray, list[str]]:
    """Segment edges on the fitting axis and the kind of each segment.

    A logistic step spans ``mid +- 2 width`` (12% to 88% of its rise), clipped to the
    data; overlapping spans of neighbouring steps are cut halfway between midpoints.
    """
    u0, u1 = float(d.u[0]), float(d.u[-1])
    if fit.kind == "broken_stick":
        return np.r_[u0, fit.theta, u1], ["linear"] * fit.k
    mids, w = fit.mids, fit.widths
    lo, hi = mids - 2 * w, mids + 2 * w
    for j in range(fit.k - 1):
        if hi[j] > lo[j + 1]:
            hi[j] = lo[j + 1] = (mids[j] + mids[j + 1]) / 2
    lo, hi = np.clip(lo, u0, u1), np.clip(hi, u0, u1)
    edges, kinds = [u0], []
    for j in range(fit.k):
        if lo[j] > edges[-1]:
            edges.append(float(lo[j]))
            kinds.append("plateau")
        edges.append(float(max(hi[j], edges[-1])))
        kinds.append("step")
    if edges[-1] < u1:
        edges.append(u1)
        kinds.append("plateau")
    return _merge_short_plateaus(edges, kinds, d.u)


def _contrasts(fit: _Fit, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``c`` with ``c @ beta`` = the change over each segment (fitted value at its
    end minus at its start) and the change at each transition (a step's amplitude, a
    breakpoint's change of slope)."""
    p = len(fit.beta)
    if fit.kind == "broken_stick" and not fit.continuous:
        C_seg, C_tr = np.zeros((fit.k, p)), np.zeros((fit.k - 1, p))
        for q in range(fit.k):
            C_seg[q, 2 * q + 1] = edges[q + 1] - edges[q]
        for q in range(fit.k - 1):
            C_tr[q, 2 * q + 3], C_tr[q, 2 * q + 1] = 1.0, -1.0
        return C_seg, C_tr
    Xe = _design(fit.kind, edges, fit.theta, True)
    first = 1 if fit.kind == "logistic" else 2
    return Xe[1:] - Xe[:-1], np.eye(p)[first : first + fit.n_transitions]


def _t_and_p(est: np.ndarray, se: np.ndarray, dof: int) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, est / np.where(se > 0, se, 1.0), np.sign(est) * np.inf)
    t = np.nan_to_num(t, nan=0.0)
    p = np.where(np.isfinite(t), 2 * stats.t.sf(np.abs(t), dof), 0.0)
    return t, p


def _paired(X: np.ndarray, Y: np.ndarray, C: np.ndarray):
    """Paired t-test across subjects of the contrasts ``C``: each subject's curve
    refitted with the transition times fixed (the design ``X``).  None with fewer
    than three usable subjects."""
    ests = []
    for i in range(Y.shape[1]):
        ok = np.isfinite(Y[:, i])
        if ok.sum() >= X.shape[1] + 2:
            b, *_ = np.linalg.lstsq(X[ok], Y[ok, i], rcond=None)
            ests.append(C @ b)
    if len(ests) < _MIN_SUBJECTS:
        return None
    E = np.asarray(ests)
    ns = len(E)
    t, p = _t_and_p(E.mean(axis=0), E.std(axis=0, ddof=1) / np.sqrt(ns), ns - 1)
    return f"paired t-test across {ns} subjects (df = {ns - 1})", t, p


@dataclass(frozen=True)
class _Tested:
    """Estimates of contrasts with the governing test (the largest p of all run)."""

    est: np.ndarray
    se: np.ndarray
    t: np.ndarray
    p: np.ndarray
    names: list[str]  # per contrast, the governing test


def _residual_test(fit: _Fit, d: _Data, X: np.ndarray, C: np.ndarray):
    """t-test of the contrasts ``C`` against the residual noise of the mean curve, the
    sample size reduced for lag-1 autocorrelation of the residuals (``n_eff = n (1 -
    r1) / (1 + r1)``, r1 bias-corrected and clipped to [0, 0.9]; Santer et al. 2000,
    J. Geophys. Res. 105:7337): checkpoints of one training run are not independent."""
    r = d.y - X @ fit.beta
    rc = r - r.mean()
    r1 = (rc[1:] @ rc[:-1]) / max(rc @ rc, 1e-300)
    r1 = float(np.clip(r1 + (1 + 4 * r1) / d.n, 0.0, 0.9))  # less its small-sample bias (Marriott & Pope 1954)
    n_eff = d.n * (1 - r1) / (1 + r1)
    dof = max(n_eff - fit.n_free, 1.0)
    cov = fit.rss / dof * np.linalg.pinv(X.T @ X)
    se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", C, cov, C), 0.0))
    t, p = _t_and_p(C @ fit.beta, se, dof)
    return f"residual t-test (df = {dof:.0f}, lag-1 autocorrelation {r1:.2f})", t, p, se, dof


def _profile_test(fit: _Fit, d: _Data, C: np.ndarray, dof: float):
    """F-test of each segment's change of a continuous broken stick against zero, the
    breakpoints refitted under the constraint: testing at the breakpoints that best fit
    the data exaggerates the change of short or flat segments (a plateau between two
    rises reads as a fall in ~8% of noisy curves with the conditional t-test)."""
    s2 = fit.rss / dof
    t = np.zeros(len(C))
    p = np.ones(len(C))
    for q, c in enumerate(C):
        N = linalg.null_space(c[None])
        _, rss0 = _refine_continuous(d.u, d.y[:, None], fit.theta, d.grid, N=N)
        F = max(rss0 - fit.rss, 0.0) / s2
        t[q], p[q] = np.sign(c @ fit.beta) * np.sqrt(F), stats.f.sf(F, 1, dof)
    return f"profile F-test, breakpoints refitted (df = 1, {dof:.0f})", t, p


def _test(fit: _Fit, d: _Data, C: np.ndarray, segments: bool = False) -> _Tested:
    """Residual t-test of each contrast on the mean curve (for the segments of a
    continuous broken stick the profile F-test instead), and with three or more
    subjects also the paired test across subjects; conditional on the fitted
    transition times and widths.  The governing test of a contrast is the one with the
    larger p."""
    X = _design(fit.kind, d.u, fit.theta, fit.continuous)
    name, t, p, se, dof = _residual_test(fit, d, X, C)
    if segments and fit.kind == "broken_stick" and fit.continuous and fit.k > 1:
        name, t, p = _profile_test(fit, d, C, dof)
    runs = [(name, t, p)]
    paired = _paired(X, d.Y, C)
    if paired is not None:
        runs.append(paired)
    P = np.array([r[2] for r in runs]).reshape(len(runs), -1)
    T = np.array([r[1] for r in runs]).reshape(len(runs), -1)
    which = np.argmax(P, axis=0)
    cols = np.arange(P.shape[1])
    both = " and ".join(r[0] for r in runs)
    names = [f"{both}, governing: {runs[w][0].split(' (')[0]}" if len(runs) > 1 else both for w in which]
    return _Tested(C @ fit.beta, se, T[which, cols], P[which, cols], names)


def _pct(a: np.ndarray | None, level: float) -> np.ndarray:
    """Percentile intervals of each column of bootstrap draws, (n_cols, 2); NaN where
    fewer than ten draws are finite."""
    if a is None:
        return np.full((0, 2), np.nan)
    out = np.full((a.shape[1], 2), np.nan)
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    for j in range(a.shape[1]):
        v = a[np.isfinite(a[:, j]), j]
        if len(v) >= 10:
            out[j] = np.quantile(v, q)
    return out


def _significant(est: np.ndarray, p: np.ndarray, iv: np.ndarray, alpha: float) -> np.ndarray:
    """p < alpha, and the interval (where there is one) on the side of the estimate."""
    lo, hi = iv[:, 0], iv[:, 1]
    have = np.isfinite(lo) & np.isfinite(hi)
    side = np.where(est > 0, lo > 0, hi < 0)
    return (p < alpha) & (~have | side) & (est != 0)


# --------------------------------------------------------------------------- bootstrap and choice


def _bootstrap(fit: _Fit, d: _Data, edges: np.ndarray, n_boot: int, block: int,
               rng: np.random.Generator) -> dict | None:
    """Refit ``fit``'s model to resampled curves: subjects resampled with replacement
    (three or more subjects), else a moving-block bootstrap of the residuals.

    Returns draws (n_boot, .) of the transition times (``loc``), step widths, the
    segment changes at the fixed ``edges`` (``seg``) and the transition changes (``tr``).
    """
    if not n_boot:
        return None
    import warnings

    fitted = _design(fit.kind, d.u, fit.theta, fit.continuous) @ fit.beta
    resid = d.y - fitted
    nt, ns = fit.n_transitions, d.n_subj
    out = {key: np.full((int(n_boot), w), np.nan) for key, w in
           (("loc", nt), ("width", nt), ("seg", len(edges) - 1), ("tr", nt))}
    for b in range(int(n_boot)):
        if ns >= _MIN_SUBJECTS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                yb = np.nanmean(d.Y[:, rng.integers(0, ns, ns)], axis=1)
            if not np.all(np.isfinite(yb)):
                continue
        else:
            yb = fitted + _block_resample(resid, block, rng)
        fb = _refit(fit, d, yb)
        if fb is None:
            continue
        C_seg, C_tr = _contrasts(fb, edges)
        out["loc"][b], out["width"][b] = fb.mids, fb.widths
        out["seg"][b], out["tr"][b] = C_seg @ fb.beta, C_tr @ fb.beta
    return out


@dataclass
class _Choice:
    """The model reported, with its phases, tests and bootstrap draws."""

    fit: _Fit
    edges: np.ndarray
    kinds: list[str]
    seg: _Tested
    tr: _Tested
    boot: dict | None
    seg_iv: np.ndarray
    tr_iv: np.ndarray
    seg_sig: np.ndarray
    notes: list[str]
    why_flat: str = ""  # why the segments are flat whatever their tests say


def _best(fits: list[_Fit]) -> _Fit:
    """The model with the fewest transitions (then parameters) among those within
    ``_BIC_MARGIN`` of the lowest BIC."""
    low = min(f.bic for f in fits)
    near = [f for f in fits if f.bic <= low + _BIC_MARGIN]
    return min(near, key=lambda f: (f.n_transitions, f.n_bic, f.bic))


def _simpler(fits: list[_Fit], cur: _Fit) -> _Fit:
    """The best model (:func:`_best`) with fewer transitions than ``cur``."""
    return _best([f for f in fits if f.n_transitions < cur.n_transitions])


def _assess(cur: _Fit, d: _Data, alpha: float, level: float, n_boot: int, block: int, rng):
    """Test ``cur``'s changes; bootstrap it when every transition passed and some rise or
    fall did.  Returns (passed, pieces of a :class:`_Choice`)."""
    edges, kinds = _edges(cur, d)
    C_seg, C_tr = _contrasts(cur, edges)
    seg, tr = _test(cur, d, C_seg, segments=True), _test(cur, d, C_tr)
    seg_iv, tr_iv = np.full((len(C_seg), 2), np.nan), np.full((len(C_tr), 2), np.nan)
    # a plateau of the logistic model has no change of its own (only the tails of its
    # neighbouring steps): flat by construction
    moving = np.array([kd != "plateau" for kd in kinds])
    seg_sig = _significant(seg.est, seg.p, seg_iv, alpha) & moving
    passed = cur.n_transitions == 0 or (np.all(_significant(tr.est, tr.p, tr_iv, alpha)) and seg_sig.any())
    boot = None
    if passed:
        boot = _bootstrap(cur, d, edges, n_boot, block, rng)
        if boot:
            seg_iv, tr_iv = _pct(boot["seg"], level), _pct(boot["tr"], level)
        seg_sig = _significant(seg.est, seg.p, seg_iv, alpha) & moving
        passed = cur.n_transitions == 0 or (np.all(_significant(tr.est, tr.p, tr_iv, alpha)) and seg_sig.any())
    return passed, [cur, edges, kinds, seg, tr, boot, seg_iv, tr_iv, seg_sig]


def _choose(fits: list[_Fit], d: _Data, alpha: float, level: float, n_boot: int, block: int, rng) -> _Choice:
    """The best model (:func:`_best`) whose every transition is significant and which
    has at least one significant rise or fall; else the best with fewer transitions,
    down to one segment.  When that is the constant, the straight line is shown and
    tested but its change is not claimed."""
    cur = first = _best(fits)
    while True:
        shown = next(f for f in fits if f.key == "broken_stick_1") if cur.kind == "constant" else cur
        passed, pieces = _assess(shown, d, alpha, level, n_boot, block, rng)
        if passed:
            break
        cur = _simpler(fits, cur)
    notes, why = [], ""
    if cur.kind == "constant":
        pieces[8] = np.zeros_like(pieces[8])  # nothing claimed
        why = (f"not claimed: a straight line does not beat a constant by more than {_BIC_MARGIN:g} in BIC "
               f"(line minus constant: {pieces[0].bic - cur.bic:+.1f})")
    if cur is not first:
        notes.append(
            f"BIC preferred the {_describe(first)}, but not each of its changes passed its test at "
            f"alpha = {alpha:g}; the {_describe(cur)} is reported."
        )
    return _Choice(*pieces, notes, why)


def _describe(f: _Fit) -> str:
    if f.kind == "constant":
        return "constant (no change)"
    if f.kind == "logistic":
        return f"logistic model with {f.k} step{'s' if f.k > 1 else ''}"
    return f"broken stick with {f.k} segment{'s' if f.k > 1 else ''}"


# --------------------------------------------------------------------------- result


def _label(est: float, sig: bool) -> str:
    return ("rising" if est > 0 else "falling") if sig else "flat"


def _segments(c: _Choice, xv: np.ndarray, to_x) -> list[Segment]:
    """Segments in x units with their changes, intervals and tests."""
    out = []
    last = len(c.edges) - 2
    for q in range(len(c.edges) - 1):
        length = c.edges[q + 1] - c.edges[q]
        plateau = c.kinds[q] == "plateau"
        out.append(Segment(
            start=float(xv[0] if q == 0 else to_x(c.edges[q])),
            end=float(xv[-1] if q == last else to_x(c.edges[q + 1])),
            slope=float(c.seg.est[q] / length) if length > 0 else 0.0,
            se=float(c.seg.se[q] / length) if length > 0 else np.inf,
            t=np.nan if plateau else float(c.seg.t[q]), p=np.nan if plateau else float(c.seg.p[q]),
            label=_label(c.seg.est[q], bool(c.seg_sig[q])),
            change=float(c.seg.est[q]), change_interval=tuple(map(float, c.seg_iv[q])),
            test=_PLATEAU if plateau else c.seg.names[q], kind=c.kinds[q], note=c.why_flat,
        ))
    return out


def _transitions(c: _Choice, segments: list[Segment], level: float, log_x: bool, to_x) -> list[Transition]:
    """Transitions with their times, widths, changes, intervals and tests."""
    f = c.fit
    loc_iv = _pct(c.boot["loc"], level) if c.boot else np.full((f.n_transitions, 2), np.nan)
    w_iv = _pct(c.boot["width"], level) if c.boot else np.full((f.n_transitions, 2), np.nan)
    steps = [q for q, kd in enumerate(c.kinds) if kd == "step"]
    labels = [s.label for s in segments]
    out = []
    for j in range(f.n_transitions):
        if f.kind == "logistic":
            q = steps[j]
            before, after = (labels[q - 1] if q > 0 else ""), (labels[q + 1] if q + 1 < len(labels) else "")
            direction = "rising" if c.tr.est[j] > 0 else "falling"
        else:
            before, after, direction = labels[j], labels[j + 1], ""
        out.append(Transition(
            kind="step" if f.kind == "logistic" else "breakpoint",
            at=float(to_x(f.mids[j])), log_at=float(f.mids[j]), log_interval=tuple(map(float, loc_iv[j])),
            change=float(c.tr.est[j]), change_interval=tuple(map(float, c.tr_iv[j])),
            width=float(f.widths[j]), width_interval=tuple(map(float, w_iv[j])),
            before=before, after=after, t=float(c.tr.t[j]), p=float(c.tr.p[j]), test=c.tr.names[j],
            log_x=log_x, direction=direction,
        ))
    return out


def _schemes(d: _Data, alpha: float, level: float, n_boot: int, block: int) -> tuple[str, str]:
    """The test scheme and the bootstrap scheme, in words."""
    pct = int(round(level * 100))
    tests = (
        "a rise or fall (the fitted change between a segment's ends) and a transition (a step's amplitude, a "
        f"breakpoint's change of slope) are claimed only when every test gives p < {alpha:g}"
        + (f" and the {pct}% bootstrap interval excludes 0" if n_boot else "")
        + "; the tests are a t-test against the residual noise of the mean curve (autocorrelation-corrected; "
        "for a broken stick's segments a profile F-test with the breakpoints refitted)"
        + (f" and a paired t-test across {d.n_subj} subjects" if d.n_subj >= _MIN_SUBJECTS else "")
        + f", given the fitted transition times; a model with more transitions is taken only when it lowers "
        f"BIC by more than {_BIC_MARGIN:g}"
    )
    if not n_boot:
        boot = "none (n_boot=0)"
    elif d.n_subj >= _MIN_SUBJECTS:
        boot = f"percentiles of {n_boot} subject bootstrap resamples ({d.n_subj} subjects), model refitted"
    else:
        boot = (f"percentiles of {n_boot} moving-block bootstrap resamples of the residuals (block {block}), "
                "model refitted")
    return tests, boot


def _result(c: _Choice, fits: list[_Fit], d: _Data, xv: np.ndarray, meta: dict) -> PhaseResult:
    """Assemble the PhaseResult of the chosen model."""
    log_x = meta["log_x"]
    to_x = (lambda v: 10.0 ** np.asarray(v, dtype=float)) if log_x else (lambda v: np.asarray(v, dtype=float))
    segments = _segments(c, xv, to_x)
    transitions = _transitions(c, segments, meta["level"], log_x, to_x)
    log_bps = np.array([t.log_at for t in transitions], dtype=float)
    log_int = np.array([t.log_interval for t in transitions], dtype=float).reshape(-1, 2)
    tests, boot = _schemes(d, meta["alpha"], meta["level"], meta["n_boot"], meta["block"])
    f = c.fit
    return PhaseResult(
        x=xv, y=d.y, fitted=_design(f.kind, d.u, f.theta, f.continuous) @ f.beta,
        breakpoints=to_x(log_bps), log_breakpoints=log_bps, intervals=to_x(log_int), log_intervals=log_int,
        segments=segments, bic={g.k: g.bic for g in fits if g.kind == "broken_stick"},
        log_x=log_x, x_name=meta["x"], name=meta["name"], level=meta["level"],
        boot_breakpoints=c.boot["loc"] if c.boot else None, model=f.kind, transitions=transitions,
        bic_models={g.key: g.bic for g in fits}, significant=meta["significant"], alpha=meta["alpha"],
        tests=tests, bootstrap=boot, notes=c.notes,
    )


# --------------------------------------------------------------------------- input


def _as_xy(curve: Any, x: str, subject_dim: str = "subject") -> tuple[np.ndarray, np.ndarray, str | None]:
    """(x values, Y with one column per subject, name) from a DataArray or a pair."""
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is a dependency
        xr = None
    if xr is not None and isinstance(curve, xr.Dataset):
        raise ValidationError("detect_phases(): curve is an xarray.Dataset; pass one variable, e.g. ds['score']")
    if xr is not None and isinstance(curve, xr.DataArray):
        da = curve
        if x in da.dims:
            dim = x
        elif x in da.coords:
            dims = da.coords[x].dims
            if len(dims) != 1:
                raise ValidationError(f"detect_phases(): coordinate {x!r} must be 1-D, has dims {dims}")
            dim = dims[0]
        else:
            raise ValidationError(
                f"detect_phases(): the curve has no coordinate {x!r} (coords: {list(da.coords)}); "
                "pass x= the name of the training-progress coordinate"
            )
        extra = [d for d in da.dims if d not in (dim, subject_dim)]
        if extra:
            raise ValidationError(
                f"detect_phases(): the curve has dims {da.dims}; only {dim!r} and {subject_dim!r} are "
                f"allowed. Select or average {extra} first (e.g. curve.sel(roi=...) or .mean('layer'))"
            )
        xv = np.asarray(da.coords[x].values, dtype=float)
        if subject_dim in da.dims:
            Y = np.asarray(da.transpose(dim, subject_dim).values, dtype=float)
        else:
            Y = np.asarray(da.values, dtype=float)[:, None]
        return xv, Y, da.name if isinstance(da.name, str) else None
    if isinstance(curve, (tuple, list)) and len(curve) == 2:
        xv = np.asarray(curve[0], dtype=float)
        Y = np.asarray(curve[1], dtype=float)
        if xv.ndim != 1:
            raise ValidationError(f"detect_phases(): x must be 1-D, has shape {xv.shape}")
        if Y.ndim == 1:
            Y = Y[:, None]
        if Y.ndim != 2 or Y.shape[0] != len(xv):
            raise ValidationError(
                f"detect_phases(): y has shape {Y.shape}; expected ({len(xv)},) or ({len(xv)}, n_subjects)"
            )
        return xv, Y, None
    raise ValidationError(
        "detect_phases(): curve must be an xarray.DataArray over checkpoints or a pair (x, y), "
        f"got {type(curve).__name__}"
    )


def _clean(xv: np.ndarray, Y: np.ndarray, x: str, log_x: bool, min_size: int, max_segments: int):
    """Drop checkpoints without a finite value (and with x <= 0 on a log axis), sort,
    and check what is left."""
    if not np.all(np.isfinite(xv)):
        raise ValidationError(f"detect_phases(): {x} contains NaN or inf")
    empty = ~np.any(np.isfinite(Y), axis=1)
    keep = ~empty
    if log_x:
        nonpos = xv <= 0
        if nonpos.any():
            log.warning("detect_phases(): dropping %d checkpoint(s) with %s <= 0 (no place on a log axis)",
                        nonpos.sum(), x)
        keep &= ~nonpos
    if empty.any():
        log.warning("detect_phases(): dropping %d checkpoint(s) with no finite value", empty.sum())
    xv, Y = xv[keep], Y[keep]
    order = np.argsort(xv, kind="stable")
    xv, Y = xv[order], Y[order]
    if len(np.unique(xv)) != len(xv):
        raise ValidationError(f"detect_phases(): {x} has repeated values; one value per checkpoint is needed")
    if len(xv) < 2 * min_size:
        raise ValidationError(
            f"detect_phases(): {len(xv)} usable checkpoints; at least {2 * min_size} are needed (min_size={min_size})"
        )
    if int(max_segments) < 1:
        raise ValidationError(f"detect_phases(): max_segments must be >= 1, got {max_segments}")
    return xv, Y


def _penalty(penalty: str | float, n: int) -> float:
    if isinstance(penalty, str):
        if penalty.lower() == "bic":
            return float(np.log(n))
        if penalty.lower() == "aic":
            return 2.0
        raise ValidationError(f"detect_phases(): penalty must be 'bic', 'aic' or a number, got {penalty!r}")
    return float(penalty)


def _data(u: np.ndarray, Y: np.ndarray, min_size: int, continuous: bool) -> _Data:
    """The fitting data and the bounds of the logistic search: widths from a quarter of
    the median checkpoint spacing to a quarter of the range; midpoints between the
    second and the second-last checkpoint, with the span ``mid +- 2 width`` inside the
    data (:func:`_mid_limits`)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        y = np.nanmean(Y, axis=1)
    lw_lo = float(np.log10(0.25 * np.median(np.diff(u))))
    lw_hi = max(float(np.log10((u[-1] - u[0]) / 4)), lw_lo)
    return _Data(u, Y, y, min_size, continuous, _grid(u), (float(u[1]), float(u[-2])), (lw_lo, lw_hi))


# --------------------------------------------------------------------------- API


def detect_phases(
    curve: Any,
    x: str = "tokens",
    log_x: bool = True,
    max_segments: int = 5,
    penalty: str | float = "bic",
    n_boot: int = 200,
    min_size: int = 3,
    continuous: bool = True,
    alpha: float = 0.05,
    level: float = 0.95,
    block: int = 3,
    seed: int | None = 0,
    name: str | None = None,
    max_steps: int = 2,
    significant: bool | None = None,
) -> PhaseResult:
    """Find phase transitions in a curve over training.

    Broken sticks (1 to ``max_segments`` segments) and logistic steps (1 to
    ``max_steps``) are fitted in log10 training progress and compared by BIC; every
    rise, fall and transition reported passed its test and carries a bootstrap
    interval (see the module docstring for the models, the tests and the intervals).

    Parameters
    ----------
    curve : xarray.DataArray or (x, y)
        A DataArray over checkpoints carrying the coordinate ``x`` (e.g. ``tokens``),
        optionally with a ``subject`` dim (subjects are averaged for the fit, and with
        three or more of them tested in pairs and resampled for the intervals); or a
        pair of arrays, ``y`` of shape (n,) or (n, n_subjects).
    x : str
        Name of the training-progress coordinate (``"tokens"`` or ``"step"``).
    log_x : bool
        Fit in log10(x) (checkpoints with x <= 0, such as step 0, are dropped with a
        warning since they have no place on a log axis).
    max_segments : int
        Most broken-stick segments tried.
    penalty : {"bic", "aic"} or float
        Model-selection penalty per parameter: ``log n`` (BIC), 2 (AIC) or the number.
    n_boot : int
        Bootstrap resamples for the intervals (0: none; claims then rest on the tests
        alone).
    min_size : int
        Fewest checkpoints per segment in the exact search.
    continuous : bool
        Continuous piecewise-linear fit (default) or independent lines per segment.
    alpha : float
        Level of the tests behind every rise, fall and transition.
    level : float
        Coverage of the bootstrap intervals.
    block : int
        Block length of the residual bootstrap (fewer than three subjects).
    seed : int or None
        Seed of the bootstrap.
    name : str, optional
        Name shown in the summary (defaults to the DataArray's name).
    max_steps : int
        Most logistic steps tried (0: broken sticks only).
    significant : bool, optional
        The caller's verdict on the region's alignment (e.g. from the ROI's
        permutation test).  False: no phase is claimed, the pattern reads
        "no significant alignment".  None or True: phases as found.

    Returns
    -------
    PhaseResult
    """
    xv, Y, da_name = _as_xy(curve, x)
    name = name if name is not None else da_name
    xv, Y = _clean(xv, Y, x, log_x, min_size, max_segments)
    u = np.log10(xv) if log_x else xv.astype(float)
    d = _data(u, Y, min_size, continuous)
    pen = _penalty(penalty, d.n)
    meta = {"log_x": log_x, "x": x, "name": name, "level": level, "alpha": alpha, "n_boot": int(n_boot or 0),
            "block": block, "significant": None if significant is None else bool(significant)}
    if significant is not None and not bool(significant):
        return _no_alignment(d, xv, meta)
    fits = _candidates(d, pen, max_segments, max_steps)
    choice = _choose(fits, d, alpha, level, meta["n_boot"], block, np.random.default_rng(seed))
    return _result(choice, fits, d, xv, meta)


def _no_alignment(d: _Data, xv: np.ndarray, meta: dict) -> PhaseResult:
    """The result for a region whose alignment the caller found not significant: the
    straight-line fit for display, no segments, no transitions."""
    fit = _fit_broken_stick(d, d.y, 1)
    tests, boot = _schemes(d, meta["alpha"], meta["level"], 0, meta["block"])
    empty = np.full((0, 2), np.nan)
    return PhaseResult(
        x=xv, y=d.y, fitted=_design(fit.kind, d.u, fit.theta) @ fit.beta, breakpoints=np.zeros(0),
        log_breakpoints=np.zeros(0), intervals=empty, log_intervals=empty.copy(), segments=[], bic={},
        log_x=meta["log_x"], x_name=meta["x"], name=meta["name"], level=meta["level"], significant=False,
        alpha=meta["alpha"], tests="none: the caller's test found no significant alignment", bootstrap="none",
    )
