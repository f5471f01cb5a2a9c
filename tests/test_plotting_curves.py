"""The report's curve figures: outside legends listing every ROI, the untrained checkpoint
at an "init" position on log axes, small multiples (curves, heatmaps, subjects) and the
aligned internal-state panels with the brain-alignment transitions drawn across them.

Every test renders the figure (``fig.canvas.draw()``) and checks what is on it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from brainalign.errors import ValidationError
from brainalign.plotting import (
    plot_aligned_curves,
    plot_curves,
    plot_curves_grid,
    plot_layer_heatmap,
    plot_layer_heatmaps,
    plot_subject_curves,
)
from brainalign.plotting.curves import _TrainingAxis, _ylabel

C = 9  # checkpoints: the untrained one, then 1e6 .. 1e10 tokens
TOKENS = np.r_[0.0, np.logspace(6, 10, C - 1)]


def _curves(n_rois=3, n_subjects=4, tokens=TOKENS, seed=0):
    """A (roi, subject, checkpoint) score DataArray whose ROIs differ in level."""
    rng = np.random.default_rng(seed)
    rois = [f"R{i:02d}" for i in range(n_rois)]
    level = np.linspace(0.05, 0.3, n_rois)[:, None, None]
    shape = np.sqrt(np.arange(len(tokens)) / (len(tokens) - 1))[None, None, :]
    score = level * shape + rng.normal(0, 0.01, (n_rois, n_subjects, len(tokens)))
    return xr.DataArray(score, dims=("roi", "subject", "checkpoint"), name="score",
                        coords={"roi": rois, "subject": [f"S{j}" for j in range(n_subjects)],
                                "checkpoint": [f"ck{i}" for i in range(len(tokens))],
                                "tokens": ("checkpoint", tokens)})


def _tick_labels(ax):
    return [t.get_text() for t in ax.get_xticklabels() if t.get_visible()]


def _data_lines(ax):
    """Lines that carry data (not the axvlines / transition markers)."""
    return [ln for ln in ax.get_lines() if ln.get_gid() is None]


def _span_x(patch):
    """(left, right) data x of an axvspan (a Rectangle, or a Polygon in older matplotlib)."""
    if hasattr(patch, "get_width"):
        return patch.get_x(), patch.get_x() + patch.get_width()
    xs = np.asarray(patch.get_xy())[:, 0]
    return xs.min(), xs.max()


def _break_marks(ax):
    return [t for t in ax.texts if t.get_gid() == "axis-break" and t.get_text() == "//"]


def _init_checks(ax, tokens=TOKENS, ticks_ax=None):
    """The untrained checkpoint is drawn left of every other point, ~half a decade or more
    from the first positive one, labelled "init", with a break mark in between; its tick
    label does not collide with the next one (tick labels read off ``ticks_ax`` when a
    shared axis shows them on another panel)."""
    ax.figure.canvas.draw()
    xs = np.asarray(_data_lines(ax)[0].get_xdata(), float)
    first = tokens[tokens > 0].min()
    assert xs[0] > 0 and (xs[0] < xs[1:]).all()
    assert 0.4 <= np.log10(first / xs[0]) <= 1.5
    ticks_ax = ticks_ax or ax
    assert "init" in _tick_labels(ticks_ax)
    marks = _break_marks(ax)
    assert len(marks) == 1 and xs[0] < marks[0].get_position()[0] < first
    shown = [t for t in ticks_ax.get_xticklabels() if t.get_visible() and t.get_text()]
    boxes = [t.get_window_extent() for t in shown]
    init = boxes[[t.get_text() for t in shown].index("init")]
    assert not any(b.overlaps(init) for b in boxes if b is not init)


# ----------------------------------------------------------------------------- plot_curves


def test_legend_outside_lists_every_roi_and_leaves_the_data_alone():
    da = _curves(n_rois=14)
    fig = plot_curves(da)
    fig.canvas.draw()
    ax = fig.axes[0]
    leg = ax.get_legend()
    assert [t.get_text() for t in leg.get_texts()] == list(da.roi.values)
    lb, ab, fb = leg.get_window_extent(), ax.get_window_extent(), fig.bbox
    assert lb.x0 >= ab.x1  # right of the axes: it cannot cover the data
    assert lb.x1 <= fb.x1 + 1 and lb.y0 >= fb.y0 - 1  # and on the figure
    # 14 curves stay 14 distinguishable curves (colour, line style)
    styles = {(ln.get_color(), ln.get_linestyle()) for ln in _data_lines(ax)}
    assert len(styles) == 14

    inside = plot_curves(da.isel(roi=slice(0, 3)), legend="inside")
    inside.canvas.draw()
    ib, iab = inside.axes[0].get_legend().get_window_extent(), inside.axes[0].get_window_extent()
    assert ib.x1 <= iab.x1 + 1
    assert plot_curves(da, legend=None).axes[0].get_legend() is None
    with pytest.raises(ValidationError, match="legend="):
        plot_curves(da, legend="left")


def test_plot_curves_shows_the_untrained_checkpoint_at_init():
    da = _curves()
    fig = plot_curves(da)
    ax = fig.axes[0]
    _init_checks(ax)
    # the y values are the subject means at every checkpoint, init included
    np.testing.assert_allclose(_data_lines(ax)[0].get_ydata(), da.isel(roi=0).mean("subject").values)
    # no zero: nothing changes (no init tick, no break)
    fig = plot_curves(da.isel(checkpoint=slice(1, None)))
    fig.canvas.draw()
    ax = fig.axes[0]
    assert "init" not in _tick_labels(ax) and not _break_marks(ax)
    np.testing.assert_allclose(_data_lines(ax)[0].get_xdata(), TOKENS[1:])
    # a linear axis keeps 0 where it is
    fig = plot_curves(da, log_x=False)
    assert _data_lines(fig.axes[0])[0].get_xdata()[0] == 0


def test_phase_spans_starting_at_zero_start_at_init():
    da = _curves(n_rois=1)
    fig = plot_curves(da, phases=[(0.0, 1e8, "rising"), (1e8, 1e10, "flat")])
    ax = fig.axes[0]
    x_init = _data_lines(ax)[0].get_xdata()[0]
    assert np.isclose(min(_span_x(p)[0] for p in ax.patches), x_init)


def test_raw_and_normalised_side_by_side_with_ax():
    da = _curves(n_rois=5)
    ds = xr.Dataset({"score": da, "score_norm": da / 0.5})
    fig = Figure(figsize=(7.0, 2.6), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    assert plot_curves(ds, var="score", ax=left, legend=None) is fig
    plot_curves(ds, var="score_norm", ax=right)
    fig.canvas.draw()
    assert left.get_ylabel() == "brain alignment (r)"
    assert right.get_ylabel() == "alignment / noise ceiling"
    leg = right.get_legend().get_window_extent()
    assert len(right.get_legend().get_texts()) == 5
    for ax in (left, right):
        assert not leg.overlaps(ax.get_window_extent())
    assert leg.x1 <= fig.bbox.x1 + 1
    np.testing.assert_allclose(_data_lines(right)[0].get_ydata(), 2 * _data_lines(left)[0].get_ydata())


@pytest.mark.parametrize("var, want", [
    ("score", "brain alignment (r)"), ("score_mean", "brain alignment (r)"), ("best_score", "brain alignment (r)"),
    ("score_normalised", "alignment / noise ceiling"), ("score_norm_mean", "alignment / noise ceiling"),
    ("score_normalised_mean", "alignment / noise ceiling"), ("fraction_significant", "fraction significant"),
    ("cka_final", "cka final"), (None, "brain alignment (r)"),
])
def test_ylabel_names(var, want):
    assert _ylabel(var) == want


# ----------------------------------------------------------------------------- grid


def test_grid_one_panel_per_roi_shared_y_and_own_phases(tmp_path):
    da = _curves(n_rois=12)
    ds = xr.Dataset({"score": da})
    # phases for two ROIs only: only their panels are shaded
    phases = {"R03": [(1e6, 1e8, "rising"), (1e8, 1e10, "flat")], "R07": [(1e6, 1e10, "rising")]}
    fig = plot_curves_grid(ds, phases=phases, out=tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0
    fig.canvas.draw()
    axes = [a for a in fig.axes if a.get_visible()]
    assert len(axes) == 12
    assert [a.get_title() for a in axes] == list(da.roi.values)
    assert len({a.get_ylim() for a in axes}) == 1
    for ax, roi in zip(axes, da.roi.values):
        lines = _data_lines(ax)
        assert len(lines) == 1
        np.testing.assert_allclose(lines[0].get_ydata(), da.sel(roi=roi).mean("subject").values)
        assert len(ax.collections) == 1  # its SEM band
        assert (len(ax.patches) > 0) == (roi in phases)
    _init_checks(axes[-1])
    # the x tick labels show under the bottom panel of every column
    labelled = [i for i, a in enumerate(axes) if any(_tick_labels(a))]
    assert labelled == [8, 9, 10, 11]
    # past 12 ROIs, too: 10 ROIs in rows of 4 -> the third row is short
    fig = plot_curves_grid(da.isel(roi=slice(0, 10)), ncols=4)
    fig.canvas.draw()
    assert len(fig.axes) == 10
    assert [i for i, a in enumerate(fig.axes) if any(_tick_labels(a))] == [6, 7, 8, 9]
    fig = plot_curves_grid(da, sharey=False)
    assert len({a.get_ylim() for a in fig.axes}) > 1


def test_grid_uses_bootstrap_bands_when_present():
    da = _curves(n_rois=2)
    mean = da.mean("subject")
    ds = xr.Dataset({"score": da, "score_lo": mean - 0.05, "score_hi": mean + 0.07})
    fig = plot_curves_grid(ds)
    band = fig.axes[1].collections[0]
    ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
    assert np.isclose(ys.min(), (mean.sel(roi="R01") - 0.05).min())
    assert np.isclose(ys.max(), (mean.sel(roi="R01") + 0.07).max())


# ----------------------------------------------------------------------------- heatmaps


def _layer_scores(n_rois=3, n_layers=5, seed=1):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1, (n_rois, n_layers, C)) * np.arange(1, n_rois + 1)[:, None, None]
    return xr.DataArray(z, dims=("roi", "layer", "checkpoint"),
                        coords={"roi": [f"R{i}" for i in range(n_rois)], "layer": np.arange(n_layers),
                                "checkpoint": [f"ck{i}" for i in range(C)], "tokens": ("checkpoint", TOKENS)})


def test_heatmaps_share_one_colour_scale_and_mark_the_chosen_layers(tmp_path):
    scores = _layer_scores()
    best = scores.idxmax("layer")
    fig = plot_layer_heatmaps(scores, best, out=tmp_path / "heat.png")
    assert (tmp_path / "heat.png").stat().st_size > 0
    fig.canvas.draw()
    panels = [a for a in fig.axes if a.get_images()]
    assert [a.get_title() for a in panels] == list(scores.roi.values)
    assert len(fig.axes) == len(panels) + 1  # one colour bar
    want = (scores.values.min(), scores.values.max())
    for ax, roi in zip(panels, scores.roi.values):
        im = ax.get_images()[0]
        np.testing.assert_allclose(im.get_clim(), want)
        np.testing.assert_allclose(im.get_array(), scores.sel(roi=roi).values)
        dots = [ln for ln in ax.get_lines() if ln.get_gid() == "best-layer"][0]
        np.testing.assert_array_equal(dots.get_ydata(), best.sel(roi=roi).values)
        assert dots.get_linestyle() == "None"
        assert "init" in _tick_labels(ax) and _break_marks(ax)
    # a Dataset with subjects: the subject mean, its best_layer
    sub = scores.expand_dims(subject=["a", "b"]).copy()
    sub[1] += 1.0
    ds = xr.Dataset({"score": sub, "best_layer": best})
    fig = plot_layer_heatmaps(ds, rois=["R2"])
    np.testing.assert_allclose(fig.axes[0].get_images()[0].get_array(), scores.sel(roi="R2").values + 0.5)
    with pytest.raises(ValidationError, match="no ROI"):
        plot_layer_heatmaps(scores, rois=["nope"])
    with pytest.raises(ValidationError, match="roi, layer, checkpoint"):
        plot_layer_heatmaps(scores.isel(roi=0))


def test_single_heatmap_labels_init():
    scores = _layer_scores(n_rois=1).isel(roi=0, drop=True)
    fig = plot_layer_heatmap(scores)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert _tick_labels(ax)[0] == "init" and len(_break_marks(ax)) == 1


# ----------------------------------------------------------------------------- aligned curves


def test_aligned_curves_transitions_in_every_panel_and_own_marks():
    from brainalign.dynamics import detect_phases

    x = np.logspace(6, 10, 24)
    y = 1 / (1 + np.exp(-(np.log10(x) - 8) / 0.3)) + np.random.default_rng(0).normal(0, 0.02, x.size)
    own = detect_phases((x, y), n_boot=20)
    assert len(own.transitions) >= 1
    curves = {"brain alignment (whole cortex)": (TOKENS, np.sqrt(np.arange(C)) * 0.1),
              "CKA to final": (TOKENS, np.linspace(0, 1, C)),
              "induction head score": (x, y)}
    transitions = [(3e7, 1e7, 6e7, "T1"), (2e9, np.nan, np.nan, "T2")]
    fig = plot_aligned_curves(curves, transitions=transitions, panel_phases={"induction head score": own})
    fig.canvas.draw()
    assert len(fig.axes) == 3
    for ax in fig.axes:
        at = sorted(ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_gid() == "transition")
        np.testing.assert_allclose(at, [3e7, 2e9])
        bands = [p for p in ax.patches if p.get_gid() == "transition-interval"]
        assert len(bands) == 1  # T2 has no interval
        np.testing.assert_allclose(_span_x(bands[0]), (1e7, 6e7))
    marks = [[ln for ln in ax.get_lines() if ln.get_gid() == "panel-transition"] for ax in fig.axes]
    assert [len(m) for m in marks] == [0, 0, len(own.transitions)]
    np.testing.assert_allclose(marks[2][0].get_xdata(), [own.transitions[0].at])
    assert {t.get_text() for t in fig.axes[0].texts} >= {"T1", "T2"}
    # compact panels, their names left of them and apart from each other
    assert fig.get_figheight() / 3 <= 1.4
    boxes = [ax.yaxis.label.get_window_extent() for ax in fig.axes]
    for ax, box in zip(fig.axes, boxes):
        assert box.x1 <= ax.get_window_extent().x0
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    _init_checks(fig.axes[0], ticks_ax=fig.axes[-1])
    assert all(_break_marks(ax) for ax in fig.axes)
    with pytest.raises(ValidationError, match="panel_phases"):
        plot_aligned_curves(curves, panel_phases={"nope": own})


def test_aligned_curves_panel_phases_from_breakpoints():
    class Result:  # a PhaseResult-like object without Transition objects
        transitions = []
        breakpoints = np.array([1e8])
        intervals = np.array([[5e7, 2e8]])

    fig = plot_aligned_curves({"a": (TOKENS[1:], np.arange(C - 1.0)), "b": (TOKENS[1:], np.ones(C - 1))},
                              panel_phases={"b": Result()})
    marks = [ln for ln in fig.axes[1].get_lines() if ln.get_gid() == "panel-transition"]
    bars = [ln for ln in fig.axes[1].get_lines() if ln.get_gid() == "panel-transition-interval"]
    np.testing.assert_allclose(marks[0].get_xdata(), [1e8])
    np.testing.assert_allclose(bars[0].get_xdata(), [5e7, 2e8])
    assert not [ln for ln in fig.axes[0].get_lines() if ln.get_gid()]


# ----------------------------------------------------------------------------- subjects


def test_subject_curves_one_thin_line_per_subject_and_the_mean(tmp_path):
    da = _curves(n_rois=5, n_subjects=3).transpose("subject", "roi", "checkpoint")
    fig = plot_subject_curves(da, out=tmp_path / "subjects.png")
    assert (tmp_path / "subjects.png").stat().st_size > 0
    fig.canvas.draw()
    assert [a.get_title() for a in fig.axes] == list(da.roi.values)
    for ax, roi in zip(fig.axes, da.roi.values):
        lines = _data_lines(ax)
        assert len(lines) == 3 + 1
        for ln, subj in zip(lines[:3], da.subject.values):
            np.testing.assert_allclose(ln.get_ydata(), da.sel(roi=roi, subject=subj).values)
        np.testing.assert_allclose(lines[-1].get_ydata(), da.sel(roi=roi).mean("subject").values)
        assert lines[-1].get_linewidth() > 2 * lines[0].get_linewidth()
    assert len({a.get_ylim() for a in fig.axes}) == 1
    leg = fig.legends[0]
    assert [t.get_text() for t in leg.get_texts()] == ["S0", "S1", "S2", "subject mean"]
    lb = leg.get_window_extent()
    assert not any(lb.overlaps(a.get_window_extent()) for a in fig.axes)
    _init_checks(fig.axes[-1])
    with pytest.raises(ValidationError, match="subject, roi, checkpoint"):
        plot_subject_curves(da.isel(subject=0))


def test_training_axis_maps_only_zero():
    tax = _TrainingAxis(TOKENS)
    assert tax.init is not None and tax(0.0) == tax.init and tax(1e6) == 1e6
    np.testing.assert_allclose(tax(TOKENS)[1:], TOKENS[1:])
    assert tax.label(0) == "init" and tax.label(2.05e9) == "2.05B"
    assert _TrainingAxis(TOKENS[1:]).init is None and _TrainingAxis(TOKENS, log=False).init is None
