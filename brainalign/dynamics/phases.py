"""Phase transitions in curves over training: piecewise-linear segmentation in log
training progress, the number of segments chosen by BIC, bootstrap intervals on the
breakpoints and a slope test per segment.

The model
---------
A curve ``y(x)`` over checkpoints is fitted, in ``u = log10(x)``, by a *continuous*
piecewise-linear function (a "broken stick": an intercept, a first slope and one slope
change per breakpoint).  Curves of alignment over training change slope rather than
jump, and the continuity constraint uses every point on both sides of a kink to place
it, so breakpoints fall between checkpoints and are located more precisely than by a
discontinuous fit, which can only cut between two checkpoints.

Optimisation is in two steps:

1. an exact dynamic programme over all segmentations into ``k`` pieces of an
   independent (discontinuous) least-squares line per piece, each piece holding at
   least ``min_size`` checkpoints.  Segment costs for all ``O(n^2)`` pieces come in
   closed form from prefix sums, so the whole programme is a few vectorised numpy
   operations (this is what ruptures' ``Dynp`` with ``CostLinear`` computes, without
   its per-segment Python loop; :func:`_dp_segment` is checked against ruptures in the
   tests);
2. the breakpoints it found seed a coordinate-descent search of the continuous model
   over a fine grid of breakpoint positions (each segment keeps >= 2 checkpoints).

``k`` from 1 to ``max_segments`` is chosen by BIC, ``n log(RSS/n) + p log n`` with
``p = (k + 1) + 3 (k - 1)``: ``k + 1`` line coefficients, and each breakpoint counted as
three parameters because its location is searched over (with one parameter per
breakpoint, plain BIC adds spurious transitions to ~10% of noisy 4-segment curves).
With ``continuous=False`` step 2 is skipped and the lines have ``2k`` coefficients.

Uncertainty: with a ``subject`` dimension, subjects are resampled with replacement and
the mean curve refitted (``k`` fixed); otherwise a moving-block bootstrap of the
residuals around the fit.  Intervals are bootstrap percentiles.  Each segment's slope
is tested against zero with a t-test (conditional on the breakpoints) and labelled
rising / falling / flat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from ..errors import ValidationError

log = logging.getLogger(__name__)

__all__ = ["detect_phases", "PhaseResult", "Segment"]

_WORD = {"rising": "rise", "falling": "fall", "flat": "flat"}
_ARROW = "\u2192"
#: a breakpoint's location is searched over, so it costs more than a linear coefficient
#: (cf. the modified BIC for change points, Zhang & Siegmund 2007, Biometrics 63:22).
#: Three was calibrated on synthetic curves (tests/test_dynamics_phases.py): a straight
#: noisy line then gives a spurious transition in ~1% of cases.
_BREAKPOINT_PARAMS = 3


@dataclass(frozen=True)
class Segment:
    """One piece of the fit: bounds in x units, slope per log10 unit of x."""

    start: float
    end: float
    slope: float
    se: float
    t: float
    p: float
    label: str


@dataclass
class PhaseResult:
    """Phases of one curve.

    Attributes
    ----------
    x, y : ndarray
        The checkpoints used (x in the original units, sorted) and the fitted curve
        (mean over subjects when there were several).
    fitted : ndarray
        The piecewise-linear fit at ``x``.
    breakpoints : ndarray
        Transition points in x units (e.g. tokens), ``n_segments - 1`` of them.
    log_breakpoints : ndarray
        The same in the fitting axis (log10 x when ``log_x``).
    intervals : ndarray, shape (n_breakpoints, 2)
        Bootstrap percentile intervals of the breakpoints in x units (NaN without
        bootstrap).
    segments : list of Segment
    bic : dict
        BIC of each number of segments tried.
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

    @property
    def n_segments(self) -> int:
        return len(self.segments)

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.segments]

    @property
    def pattern(self) -> str:
        """Segment labels as words joined by arrows, e.g. ``"rise→fall→rise"``."""
        return _ARROW.join(_WORD[lab] for lab in self.labels)

    @property
    def three_phase(self) -> bool:
        """True when the segments show rise → fall → rise (flat pieces ignored,
        repeated labels merged)."""
        seq: list[str] = []
        for lab in self.labels:
            if lab != "flat" and (not seq or seq[-1] != lab):
                seq.append(lab)
        s = ",".join(seq)
        return "rising,falling,rising" in s

    def _fmt(self, v: float) -> str:
        return f"{v:.3g}"

    def summary(self) -> str:
        """A few lines of text: the pattern, the transitions with intervals, and
        whether the three-phase rise → fall → rise account fits."""
        what = f"{self.name}: " if self.name else ""
        axis = f"log10 {self.x_name}" if self.log_x else self.x_name
        lines = [
            f"{what}{self.n_segments} segment(s) over {len(self.x)} checkpoints "
            f"({self.x_name} {self._fmt(self.x[0])} to {self._fmt(self.x[-1])}): {self.pattern}"
        ]
        if self.n_segments == 1:
            lines.append("No phase transition: one segment fits best (BIC).")
        pct = int(round(self.level * 100))
        for i, bp in enumerate(self.breakpoints):
            lo, hi = self.intervals[i]
            ci = f", {pct}% CI {self._fmt(lo)}-{self._fmt(hi)}" if np.isfinite(lo) else ""
            lines.append(
                f"  transition {i + 1} at {self.x_name} = {self._fmt(bp)} "
                f"({axis} {self.log_breakpoints[i]:.2f}{ci})"
            )
        for s in self.segments:
            lines.append(
                f"  {s.label:8s} {self._fmt(s.start)} to {self._fmt(s.end)}: slope {s.slope:+.3g} per "
                f"{'decade' if self.log_x else 'unit'} (t = {s.t:.2f}, p = {s.p:.2g})"
            )
        if self.three_phase:
            lines.append("The three-phase pattern (rise \u2192 fall \u2192 rise) is present.")
        else:
            lines.append(f"The three-phase pattern (rise \u2192 fall \u2192 rise) is not present (found {self.pattern}).")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_frame(self):
        """One row per segment: bounds, slope and test, label, and the breakpoint that
        ends the segment with its interval (pandas DataFrame)."""
        import pandas as pd

        rows = []
        for i, s in enumerate(self.segments):
            last = i == len(self.segments) - 1
            rows.append(
                {
                    "curve": self.name,
                    "segment": i,
                    "start": s.start,
                    "end": s.end,
                    "slope": s.slope,
                    "se": s.se,
                    "t": s.t,
                    "p": s.p,
                    "label": s.label,
                    "breakpoint": np.nan if last else self.breakpoints[i],
                    "breakpoint_lo": np.nan if last else self.intervals[i, 0],
                    "breakpoint_hi": np.nan if last else self.intervals[i, 1],
                }
            )
        return pd.DataFrame(rows)


# --------------------------------------------------------------------------- fitting


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


def _refine_continuous(u: np.ndarray, Y: np.ndarray, bps: np.ndarray, grid: np.ndarray, n_sweeps: int = 6) -> tuple[np.ndarray, float]:
    """Coordinate descent of the continuous (hinge) model's breakpoints over ``grid``;
    each segment keeps at least two checkpoints."""
    bps = np.sort(np.asarray(bps, dtype=float))
    m = len(bps)
    best = float(_batched_rss(_hinge_design(u, bps[None]), Y)[0])
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
            rss = _batched_rss(_hinge_design(u, B), Y)
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


def _slopes(u: np.ndarray, y: np.ndarray, bps: np.ndarray, continuous: bool, n_params: int):
    """Fitted values, and per-segment (slope, se, t, p)."""
    n = len(u)
    edges = np.concatenate([[-np.inf], bps, [np.inf]])
    out = []
    fitted = np.empty(n)
    if continuous:
        X = _hinge_design(u, bps[None])[0]
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        fitted = X @ beta
        dof = max(n - n_params, 1)
        s2 = float(np.sum((y - fitted) ** 2)) / dof
        cov = s2 * np.linalg.pinv(X.T @ X)
        for q in range(len(bps) + 1):
            c = np.zeros(X.shape[1])
            c[1] = 1.0
            c[2 : 2 + q] = 1.0
            slope = float(c @ beta)
            se = float(np.sqrt(max(c @ cov @ c, 0.0)))
            out.append((slope, se, dof))
    else:
        for q in range(len(bps) + 1):
            sel = (u > edges[q]) & (u < edges[q + 1])
            uq, yq = u[sel], y[sel]
            A = np.column_stack([np.ones(len(uq)), uq])
            beta, *_ = np.linalg.lstsq(A, yq, rcond=None)
            fitted[sel] = A @ beta
            dof = max(len(uq) - 2, 1)
            s2 = float(np.sum((yq - A @ beta) ** 2)) / dof
            vu = float(np.sum((uq - uq.mean()) ** 2))
            se = float(np.sqrt(s2 / vu)) if vu > 0 else np.inf
            out.append((float(beta[1]), se, dof))
    res = []
    for slope, se, dof in out:
        if se > 0:
            t = slope / se
        else:
            t = np.inf * np.sign(slope) if slope != 0 else 0.0
        p = float(2 * stats.t.sf(abs(t), dof)) if np.isfinite(t) else 0.0
        res.append((slope, se, float(t), p))
    return fitted, res


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
        f"detect_phases(): curve must be an xarray.DataArray over checkpoints or a pair (x, y), got {type(curve).__name__}"
    )


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
) -> PhaseResult:
    """Find phase transitions in a curve over training.

    Parameters
    ----------
    curve : xarray.DataArray or (x, y)
        A DataArray over checkpoints carrying the coordinate ``x`` (e.g. ``tokens``),
        optionally with a ``subject`` dim (subjects are averaged for the fit and
        resampled for the intervals); or a pair of arrays, ``y`` of shape (n,) or
        (n, n_subjects).
    x : str
        Name of the training-progress coordinate (``"tokens"`` or ``"step"``).
    log_x : bool
        Fit in log10(x) (checkpoints with x <= 0, such as step 0, are dropped with a
        warning since they have no place on a log axis).
    max_segments : int
        Most segments tried.
    penalty : {"bic", "aic"} or float
        Model-selection penalty per parameter: ``log n`` (BIC), 2 (AIC) or the number.
    n_boot : int
        Bootstrap resamples for the breakpoint intervals (0: none).
    min_size : int
        Fewest checkpoints per segment in the exact search.
    continuous : bool
        Continuous piecewise-linear fit (default) or independent lines per segment.
    alpha : float
        Level of the slope t-test that labels segments rising / falling / flat.
    level : float
        Coverage of the bootstrap intervals.
    block : int
        Block length of the residual bootstrap (when there is no subject dim).
    seed : int or None
        Seed of the bootstrap.
    name : str, optional
        Name shown in the summary (defaults to the DataArray's name).

    Returns
    -------
    PhaseResult
    """
    xv, Y, da_name = _as_xy(curve, x)
    name = name if name is not None else da_name
    if not np.all(np.isfinite(xv)):
        raise ValidationError(f"detect_phases(): {x} contains NaN or inf")
    keep = np.any(np.isfinite(Y), axis=1)
    if log_x:
        nonpos = xv <= 0
        if nonpos.any():
            log.warning("detect_phases(): dropping %d checkpoint(s) with %s <= 0 (no place on a log axis)", nonpos.sum(), x)
        keep &= ~nonpos
    if (~np.any(np.isfinite(Y), axis=1)).any():
        log.warning("detect_phases(): dropping %d checkpoint(s) with no finite value", (~np.any(np.isfinite(Y), axis=1)).sum())
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
    if Y.shape[1] > 1 and np.isnan(Y).any():
        # subjects missing a checkpoint: average what is there
        pass
    u = np.log10(xv) if log_x else xv.astype(float)
    y = np.nanmean(Y, axis=1)
    n = len(u)
    if isinstance(penalty, str):
        if penalty.lower() == "bic":
            pen = np.log(n)
        elif penalty.lower() == "aic":
            pen = 2.0
        else:
            raise ValidationError(f"detect_phases(): penalty must be 'bic', 'aic' or a number, got {penalty!r}")
    else:
        pen = float(penalty)
    grid = _grid(u)
    y1 = y[:, None]
    cost = _segment_costs(u, y1, min_size)
    floor = 1e-12 * n * (np.var(y) + 1e-30)
    bic: dict[int, float] = {}
    fits: dict[int, np.ndarray] = {}
    kmax = min(int(max_segments), n // min_size)
    for k in range(1, kmax + 1):
        bps, rss = _fit_k(u, y1, k, min_size, continuous, grid, cost)
        if bps is None:
            continue
        p = _n_params(k, continuous)
        bic[k] = float(n * np.log(max(rss, floor) / n) + pen * p)
        fits[k] = bps
    k = min(bic, key=lambda kk: (bic[kk], kk))
    bps = fits[k]
    n_params = 2 * k if continuous else 3 * k - 1  # coefficients + breakpoint locations
    fitted, tests = _slopes(u, y, bps, continuous, n_params)

    # bootstrap intervals of the breakpoints, k fixed
    m = k - 1
    boot = None
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    log_int = np.full((m, 2), np.nan)
    if n_boot and m > 0:
        rng = np.random.default_rng(seed)
        boot = np.full((int(n_boot), m), np.nan)
        resid = y - fitted
        n_subj = Y.shape[1]
        for b in range(int(n_boot)):
            if n_subj > 1:
                cols = rng.integers(0, n_subj, n_subj)
                yb = np.nanmean(Y[:, cols], axis=1)
                if not np.all(np.isfinite(yb)):
                    continue
            else:
                yb = fitted + _block_resample(resid, block, rng)
            bb, _ = _fit_k(u, yb[:, None], k, min_size, continuous, grid)
            if bb is not None:
                boot[b] = bb
        ok = np.all(np.isfinite(boot), axis=1)
        if ok.any():
            log_int = np.column_stack([np.quantile(boot[ok], lo_q, axis=0), np.quantile(boot[ok], hi_q, axis=0)])
    to_x = (lambda v: 10.0**v) if log_x else (lambda v: v)
    edges_x = np.concatenate([[xv[0]], to_x(bps), [xv[-1]]])
    segments = []
    for q, (slope, se, t, p) in enumerate(tests):
        if p < alpha and slope > 0:
            label = "rising"
        elif p < alpha and slope < 0:
            label = "falling"
        else:
            label = "flat"
        segments.append(Segment(float(edges_x[q]), float(edges_x[q + 1]), slope, se, t, p, label))
    return PhaseResult(
        x=xv,
        y=y,
        fitted=fitted,
        breakpoints=to_x(bps),
        log_breakpoints=bps,
        intervals=to_x(log_int),
        log_intervals=log_int,
        segments=segments,
        bic=bic,
        log_x=log_x,
        x_name=x,
        name=name,
        level=level,
        boot_breakpoints=boot,
    )


def _n_params(k: int, continuous: bool) -> int:
    """Parameters counted by the criterion: the line coefficients (``k + 1`` for the
    continuous fit, ``2k`` for independent lines) plus three per breakpoint."""
    coef = k + 1 if continuous else 2 * k
    return coef + _BREAKPOINT_PARAMS * (k - 1)


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
