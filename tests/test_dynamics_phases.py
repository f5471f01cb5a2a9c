import logging

import numpy as np
import pytest
import xarray as xr

from brainalign import ValidationError
from brainalign.dynamics import PhaseResult, detect_phases
from brainalign.dynamics.phases import _dp_segment, _segment_costs

U0, U1, N = 6.0, 10.0, 40  # 40 log-spaced checkpoints, 1e6 .. 1e10 tokens


def _broken_stick(u, bps, slopes, y0=0.2):
    y = y0 + slopes[0] * (u - u[0])
    for q in range(1, len(slopes)):
        y = y + (slopes[q] - slopes[q - 1]) * np.maximum(u - bps[q - 1], 0)
    return y


def _planted(rng, n_seg, sd):
    """A curve with n_seg pieces (slopes 0.5-1 per decade, alternating sign, pieces
    >= 0.8 decades long) and Gaussian noise of sd ``sd``."""
    u = np.linspace(U0, U1, N)
    while True:
        bps = np.sort(rng.uniform(U0 + 0.5, U1 - 0.5, n_seg - 1))
        if (np.diff(np.concatenate([[U0], bps, [U1]])) >= 0.8).all():
            break
    sign = rng.choice([-1, 1])
    slopes = [sign * (-1) ** q * rng.uniform(0.5, 1.0) for q in range(n_seg)]
    return 10**u, _broken_stick(u, bps, slopes) + rng.normal(0, sd, N), bps


def test_planted_breakpoints_recovered():
    rng = np.random.default_rng(2024)
    hits = 0
    for trial in range(100):
        n_seg = 2 + trial % 3
        x, y, bps = _planted(rng, n_seg, rng.uniform(0.01, 0.05))
        res = detect_phases((x, y), n_boot=0)
        hits += res.n_segments == n_seg and bool(np.all(np.abs(res.log_breakpoints - bps) <= 0.1))
    assert hits >= 90, hits


def test_straight_line_has_no_transition():
    rng = np.random.default_rng(7)
    u = np.linspace(U0, U1, N)
    none = 0
    for trial in range(100):
        y = 0.1 + rng.uniform(-0.3, 0.3) * (u - U0) + rng.normal(0, rng.uniform(0.01, 0.05), N)
        res = detect_phases((10**u, y), n_boot=0)
        none += res.n_segments == 1 and len(res.breakpoints) == 0
    assert none >= 90, none


def test_dp_matches_ruptures_dynp():
    import ruptures as rpt

    rng = np.random.default_rng(3)
    u = np.linspace(0, 1, 30)
    y = np.where(u < 0.3, 2 * u, np.where(u < 0.7, 1 - u, 3 * u)) + rng.normal(0, 0.05, 30)
    cost = _segment_costs(u, y[:, None], min_size=3)
    for k in (2, 3, 4):
        total, ends = _dp_segment(cost, k)
        signal = np.column_stack([y, np.ones_like(u), u])
        algo = rpt.Dynp(model="linear", min_size=3, jump=1).fit(signal)
        want = algo.predict(n_bkps=k - 1)[:-1]
        assert ends == want
        ref = sum(algo.cost.error(a, b) for a, b in zip([0, *want], [*want, 30]))
        assert total == pytest.approx(ref, rel=1e-8)


def _three_phase_da(rng, n_subj=6, sd=0.03):
    u = np.linspace(U0, U1, N)
    truth = np.array([7.2, 8.6])
    base = _broken_stick(u, truth, [0.6, -0.5, 0.7])
    scores = base[:, None] + rng.normal(0, sd, (N, n_subj))
    return xr.DataArray(
        scores,
        dims=("checkpoint", "subject"),
        coords={
            "checkpoint": [f"step{i}" for i in range(N)],
            "tokens": ("checkpoint", 10**u),
            "step": ("checkpoint", np.arange(N)),
            "subject": [f"S{i}" for i in range(n_subj)],
        },
        name="whole_cortex",
    ), truth


def test_dataarray_with_subjects_bootstrap_and_summary():
    da, truth = _three_phase_da(np.random.default_rng(11))
    res = detect_phases(da, n_boot=100, seed=1)
    assert isinstance(res, PhaseResult)
    assert res.n_segments == 3
    assert res.labels == ["rising", "falling", "rising"]
    assert res.pattern == "rise\u2192fall\u2192rise"
    assert res.three_phase
    np.testing.assert_allclose(res.log_breakpoints, truth, atol=0.1)
    np.testing.assert_allclose(res.breakpoints, 10**res.log_breakpoints)
    # intervals (over subjects) bracket the estimate, are finite and narrow
    lo, hi = res.log_intervals[:, 0], res.log_intervals[:, 1]
    assert np.all(lo <= res.log_breakpoints + 1e-9) and np.all(res.log_breakpoints <= hi + 1e-9)
    assert np.all(hi - lo < 0.5)
    text = res.summary()
    assert "whole_cortex" in text and "is present" in text and "transition 2" in text
    df = res.to_frame()
    assert list(df["label"]) == ["rising", "falling", "rising"]
    assert df["breakpoint"].notna().sum() == 2 and np.isnan(df["breakpoint"].iloc[-1])
    assert df["p"].max() < 0.05


def test_residual_bootstrap_without_subjects_is_seeded():
    da, truth = _three_phase_da(np.random.default_rng(5), n_subj=1)
    curve = da.isel(subject=0)
    a = detect_phases(curve, n_boot=50, seed=3)
    b = detect_phases(curve, n_boot=50, seed=3)
    np.testing.assert_array_equal(a.log_intervals, b.log_intervals)
    assert np.all(np.isfinite(a.log_intervals))
    assert np.all(a.log_intervals[:, 0] < truth + 0.3) and np.all(a.log_intervals[:, 1] > truth - 0.3)


def test_flat_and_no_three_phase_summary():
    rng = np.random.default_rng(0)
    u = np.linspace(U0, U1, N)
    y = 0.05 + rng.normal(0, 0.02, N)
    res = detect_phases((10**u, y), n_boot=0, name="flat roi")
    assert res.n_segments == 1 and res.labels == ["flat"]
    assert not res.three_phase
    text = res.summary()
    assert "No phase transition" in text and "is not present" in text
    # rise then plateau: two segments, rising then flat
    y = _broken_stick(u, [8.0], [0.8, 0.0]) + rng.normal(0, 0.02, N)
    res = detect_phases((10**u, y), n_boot=0)
    assert res.labels == ["rising", "flat"] and not res.three_phase


def test_discontinuous_option_and_linear_axis():
    rng = np.random.default_rng(1)
    x = np.linspace(0, 10, 40)
    y = np.where(x < 5, 0.2 * x, 1.0 - 0.2 * (x - 5)) + rng.normal(0, 0.02, 40)
    for cont in (True, False):
        res = detect_phases((x + 1, y), log_x=False, n_boot=0, continuous=cont)
        assert res.n_segments == 2 and abs(res.breakpoints[0] - 6.0) < 0.5
        assert res.labels == ["rising", "falling"]


def test_step_zero_dropped_with_warning(caplog):
    rng = np.random.default_rng(2)
    x = np.concatenate([[0], np.geomspace(1, 1e4, 30)])
    y = rng.normal(0, 0.01, 31) + 0.1 * np.log10(np.maximum(x, 1))
    with caplog.at_level(logging.WARNING):
        res = detect_phases((x, y), x="step", n_boot=0)
    assert "step <= 0" in caplog.text
    assert len(res.x) == 30 and res.x[0] == 1


def test_bad_input():
    da, _ = _three_phase_da(np.random.default_rng(0))
    with pytest.raises(ValidationError, match="no coordinate 'flops'"):
        detect_phases(da, x="flops")
    with pytest.raises(ValidationError, match=r"Select or average \['layer'\]"):
        detect_phases(da.expand_dims(layer=[0, 1]), n_boot=0)
    with pytest.raises(ValidationError, match="at least 6"):
        detect_phases(([1, 10, 100, 1000], [0, 1, 0, 1]))
    with pytest.raises(ValidationError, match="y has shape"):
        detect_phases(([1, 10, 100], [0, 1]))
    with pytest.raises(ValidationError, match="repeated"):
        detect_phases((np.repeat(np.arange(1, 11), 2), np.arange(20.0)))
    with pytest.raises(ValidationError, match="penalty"):
        detect_phases(da, penalty="mdl")
    with pytest.raises(ValidationError, match="xarray.Dataset"):
        detect_phases(da.to_dataset())
