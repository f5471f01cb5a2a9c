"""Flatmaps, inflated views, movies and curve figures (issue 7), headless (Agg)."""

import importlib.util
import os
import shutil
import subprocess
import sys
import types

import matplotlib as mpl
import numpy as np
import pytest
import xarray as xr
from scipy.spatial import cKDTree

from brainalign import ValidationError
from brainalign.plotting import (
    flat_coordinates,
    flatmap,
    flatmap_movie,
    plot_aligned_curves,
    plot_curves,
    plot_layer_heatmap,
    surface_views,
)
from brainalign.plotting.curves import phase_spans
from brainalign.rois import Atlas, aggregate, load_atlas
from brainalign.surfaces import medial_wall

N5 = 10242


def _importorskip(module: str, why: str):
    """(present, marker) for an optional dependency: tests needing it skip visibly without it."""
    present = importlib.util.find_spec(module) is not None
    return present, pytest.mark.skipif(not present, reason=f"{module} is not installed: {why} not checked")


has_pycortex, requires_pycortex = _importorskip("cortex", "volume flatmaps drawn by pycortex")
has_ffmpeg = shutil.which("ffmpeg") is not None
requires_ffmpeg = pytest.mark.skipif(not has_ffmpeg, reason="ffmpeg is not on PATH: writing MP4 movies not checked")


@pytest.fixture(scope="module")
def lang():
    return load_atlas("language")


def _interior(mask, margin=6.0):
    """Vertices of ``mask`` at least ``margin`` mm (flat) from any vertex outside it."""
    xy = flat_coordinates()
    inside = np.flatnonzero(mask & ~medial_wall())
    outside = np.flatnonzero(~mask & ~medial_wall())
    d, _ = cKDTree(xy[outside]).query(xy[inside])
    return inside[d > margin]


def _pixels(fig, idx):
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255
    ax = next(a for a in fig.axes if a.get_label() == "flatmap")
    px = ax.transData.transform(flat_coordinates()[idx])
    cols = np.clip(np.round(px[:, 0]).astype(int), 0, img.shape[1] - 1)
    rows = np.clip(img.shape[0] - np.round(px[:, 1]).astype(int), 0, img.shape[0] - 1)
    return img, img[rows, cols], cols


def _planted(rng, lang):
    v = rng.uniform(0.0, 0.2, 2 * N5)
    v[lang.mask("L_pSTS")] = 0.8
    v[lang.mask("R_IFGtri")] = 0.8
    return v


def test_flatmap_shows_planted_regions_where_planted(rng, lang, tmp_path):
    v = _planted(rng, lang)
    fig = flatmap(v, threshold=0.5, cmap="viridis", vmin=0, vmax=1, title="planted", label="Pearson r",
                  out=tmp_path / "map.png")
    assert isinstance(fig, mpl.figure.Figure)
    want = np.asarray(mpl.colormaps["viridis"](0.8)[:3])
    img, planted_l, cols_l = _pixels(fig, _interior(lang.mask("L_pSTS")))
    _, planted_r, cols_r = _pixels(fig, _interior(lang.mask("R_IFGtri")))
    _, control_l, _ = _pixels(fig, _interior(lang.mask("L_IFGtri")))
    _, control_r, _ = _pixels(fig, _interior(lang.mask("R_pSTS")))
    width = img.shape[1]
    # not blank: the image has structure, and both halves have non-white pixels
    assert img.std() > 0.05
    for half in (img[:, : width // 2], img[:, width // 2 :]):
        assert (half.sum(-1) < 2.9).mean() > 0.2
    # planted regions sit in their own hemisphere's half and show the planted colour
    assert len(planted_l) > 5 and len(planted_r) > 5
    assert (cols_l < width / 2).all() and (cols_r > width / 2).all()
    for got in (planted_l, planted_r):
        assert (np.abs(got - want).max(axis=1) < 0.08).mean() > 0.9
    # the mirror regions were not planted: thresholded away, grey sulcal background there
    for got in (control_l, control_r):
        assert (np.ptp(got, axis=1) < 0.02).mean() > 0.9
        assert (np.abs(got - want).max(axis=1) > 0.2).all()
    # the PNG on disk holds the figure
    disk = mpl.image.imread(tmp_path / "map.png")
    assert disk.ndim == 3 and disk.shape[0] > 200 and disk[..., :3].std() > 0.05
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_flatmap_mask_fsaverage6_outlines_and_formats(rng, lang, tmp_path):
    v = _planted(rng, lang)
    keep = np.ones(2 * N5, bool)
    keep[lang.mask("L_pSTS")] = False  # "not significant" there
    fig = flatmap(v, threshold=0.5, mask=keep, cmap="viridis", vmin=0, vmax=1)
    _, got, _ = _pixels(fig, _interior(lang.mask("L_pSTS")))
    assert (np.ptp(got, axis=1) < 0.02).mean() > 0.9  # masked -> background grey

    # fsaverage6 data are drawn through the nested fsaverage5 vertices: same picture
    n6 = 40962
    v6 = rng.uniform(-1, 1, 2 * n6)
    v6[:N5], v6[n6 : n6 + N5] = v[:N5], v[N5:]
    a = _pixels(flatmap(v, vmin=0, vmax=1, cmap="viridis"), [0])[0]
    b = _pixels(flatmap(v6, vmin=0, vmax=1, cmap="viridis"), [0])[0]
    np.testing.assert_array_equal(a, b)

    # an xarray map with singleton dims and the space in attrs; ROI outlines drawn
    da = xr.DataArray(v[None], dims=("layer", "target"), name="score", attrs={"space": "fsaverage5"})
    fig = flatmap(da, rois=lang, out=tmp_path / "map.svg")
    ax = next(x for x in fig.axes if x.get_label() == "flatmap")
    assert len(ax.collections) == 3 and any(t.get_text() == "pSTS" for t in ax.texts)
    assert (tmp_path / "map.svg").read_text().lstrip().startswith("<?xml")
    flatmap(v, out=tmp_path / "map.pdf")
    assert (tmp_path / "map.pdf").read_bytes()[:4] == b"%PDF"

    with pytest.raises(ValidationError, match="match no fsaverage"):
        flatmap(np.zeros(1000))
    with pytest.raises(ValidationError, match="one map at a time"):
        flatmap(xr.DataArray(np.zeros((2, 2 * N5)), dims=("layer", "target")))
    with pytest.raises(ValidationError, match="format"):
        flatmap(v, out=tmp_path / "map.bmpx")
    assert not (tmp_path / "map.bmpx").exists()


def test_surface_views_planted(rng, lang):
    v = np.zeros(2 * N5)
    v[lang.mask("L_IFGtri")] = 1.0  # frontal: left of the left lateral view, right of the right one
    v[lang.mask("R_IFGtri")] = 1.0
    fig = surface_views(v, threshold=0.5, cmap="viridis", vmin=0, vmax=1)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255

    def coloured(label):
        ax = next(a for a in fig.axes if a.get_label() == label)
        x0, y0, x1, y1 = ax.get_window_extent().extents.astype(int)
        part = img[img.shape[0] - y1 : img.shape[0] - y0, x0:x1]
        # shaded planted colour (yellow): clearly not grey
        hit = np.ptp(part, axis=-1) > 0.3
        cols = np.flatnonzero(hit.any(axis=0))
        return hit.sum(), (cols.mean() / part.shape[1] if len(cols) else np.nan)

    n, where = coloured("left_lateral")
    assert n > 100 and where < 0.4
    n, where = coloured("right_lateral")
    assert n > 100 and where > 0.6
    assert coloured("left_medial")[0] == 0 and coloured("right_medial")[0] == 0
    with pytest.raises(ValidationError, match="view"):
        surface_views(v, views=("sideways",))


def test_flatmap_movie_gif(rng, lang, tmp_path):
    import imageio.v3 as iio

    frames = np.stack([np.where(lang.mask("L_pSTS"), a, 0.0) for a in (0.2, 0.6, 1.0)])
    da = xr.DataArray(
        frames, dims=("checkpoint", "target"),
        coords={"checkpoint": ["step1", "step2", "step3"], "step": ("checkpoint", [1, 1000, 143000]),
                "tokens": ("checkpoint", [2e6, 2.1e9, 3e11])},
        attrs={"space": "fsaverage5"},
    )
    written = flatmap_movie(da, out=tmp_path / "movie.gif", fps=5, mp4=False)
    assert written == [tmp_path / "movie.gif"]
    from brainalign.plotting.flat import _frame_labels

    assert _frame_labels(da)[1] == ["step 1 — 2M tokens", "step 1,000 — 2.1B tokens", "step 143,000 — 300B tokens"]
    movie = iio.imread(tmp_path / "movie.gif", index=None)
    assert movie.shape[0] == 3 and movie.shape[1] > 100
    assert np.abs(movie[0].astype(int) - movie[2].astype(int)).max() > 50  # frames differ
    # the fast frame path (faces rasterised once, colours looked up) draws the same picture
    from brainalign.plotting import FlatmapFigure

    fm = FlatmapFigure(vmin=0, vmax=1, cmap="viridis", rois=lang, title="t")
    fm.update(frames[1], caption="c")
    slow = fm.to_rgb(60).astype(int)
    fast = fm.frame(frames[1], caption="c", dpi=60).astype(int)
    assert slow.shape == fast.shape and np.abs(slow - fast).max() <= 6
    with pytest.raises(ValidationError, match="labels"):
        flatmap_movie(list(frames), labels=["one"], out=tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()


def _movie_frames(lang):
    return [np.where(lang.mask("L_pSTS"), a, 0.0) for a in (0.2, 0.6, 1.0)]


def test_flatmap_movie_without_ffmpeg(lang, tmp_path, monkeypatch):
    # ffmpeg absent (made so here, whether or not this machine has it): an MP4 is refused
    # with what to install, and a GIF is still written (no MP4 beside it)
    import brainalign.plotting.flat as flat

    monkeypatch.setattr(flat.shutil, "which", lambda name: None)
    with pytest.raises(ValidationError, match="ffmpeg"):
        flatmap_movie(_movie_frames(lang), out=tmp_path / "movie.mp4")
    assert flatmap_movie(_movie_frames(lang), out=tmp_path / "movie.gif") == [tmp_path / "movie.gif"]
    assert not (tmp_path / "movie.mp4").exists()


def test_ffmpeg_failure_is_a_runtime_error(lang, tmp_path, monkeypatch):
    # an ffmpeg that runs and fails: a RuntimeError (and a brainalign error) carrying its
    # stderr, and no partial file
    from brainalign import BrainalignError
    from brainalign.errors import ExternalToolError

    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho 'Unknown encoder libx264' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match="ffmpeg failed writing .*Unknown encoder libx264") as info:
        flatmap_movie(_movie_frames(lang), out=tmp_path / "movie.mp4")
    assert isinstance(info.value, ExternalToolError) and isinstance(info.value, BrainalignError)
    assert not (tmp_path / "movie.mp4").exists() and not list(tmp_path.glob(".*movie*"))


@requires_ffmpeg
def test_flatmap_movie_mp4_with_ffmpeg(lang, tmp_path):
    written = flatmap_movie(_movie_frames(lang), out=tmp_path / "movie.gif", fps=5)
    assert written == [tmp_path / "movie.gif", tmp_path / "movie.mp4"]  # MP4 beside the GIF by default
    data = (tmp_path / "movie.mp4").read_bytes()
    assert data[4:8] == b"ftyp" and len(data) > 1000
    probe = subprocess.run([shutil.which("ffmpeg"), "-v", "error", "-i", str(tmp_path / "movie.mp4"), "-f", "null",
                            "-"], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr


def _volume_case():
    from brainalign import Space

    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:4, 2:5] = True
    return Space.volume("UTS01", mask), np.arange(mask.sum(), dtype=float)


def test_volume_flatmap_without_pycortex(monkeypatch):
    # pycortex absent (made so here): an ImportError, and a brainalign error, saying what to install
    from brainalign import BrainalignError

    monkeypatch.setitem(sys.modules, "cortex", None)  # import cortex -> ImportError
    vspace, v = _volume_case()
    with pytest.raises(ImportError, match="pip install pycortex") as info:
        flatmap(v, space=vspace, pycortex=("UTS01", "UTS01_auto"))
    assert isinstance(info.value, BrainalignError)


def test_volume_flatmap_hands_pycortex_the_volume(monkeypatch):
    # pycortex present (a stand-in module): the values reach quickflat as a volume in the
    # space's mask, with the colour limits, and the figure comes back titled
    from matplotlib.figure import Figure

    seen = {}

    class Volume:
        def __init__(self, data, subject, xfm, vmin, vmax, cmap):
            seen.update(data=data, subject=subject, xfm=xfm, vmin=vmin, vmax=vmax, cmap=cmap)

    def make_figure(vol, with_curvature):
        seen["with_curvature"] = with_curvature
        return Figure()

    cortex = types.ModuleType("cortex")
    cortex.Volume = Volume
    cortex.quickflat = types.SimpleNamespace(make_figure=make_figure)
    monkeypatch.setitem(sys.modules, "cortex", cortex)
    vspace, v = _volume_case()
    fig = flatmap(v, space=vspace, pycortex=("UTS01", "UTS01_auto"), vmin=0, vmax=10, cmap="viridis", title="t")
    assert fig._suptitle.get_text() == "t"
    assert (seen["subject"], seen["xfm"], seen["vmin"], seen["vmax"], seen["cmap"]) == ("UTS01", "UTS01_auto", 0, 10,
                                                                                      "viridis")
    assert seen["data"].shape == vspace.mask.shape and seen["with_curvature"]
    np.testing.assert_array_equal(seen["data"][vspace.mask], v)
    assert np.isnan(seen["data"][~vspace.mask]).all()


@requires_pycortex
def test_volume_flatmap_with_pycortex(tmp_path):
    # the real pycortex and its sample subject S1 (shipped in pycortex's filestore)
    import cortex

    shape = cortex.db.get_xfm("S1", "fullhead").shape
    from brainalign import Space

    mask = cortex.db.get_mask("S1", "fullhead", "thick").astype(bool)
    assert mask.shape == tuple(shape)
    v = np.random.default_rng(0).standard_normal(int(mask.sum()))
    fig = flatmap(v, space=Space.volume("S1", mask), pycortex=("S1", "fullhead"), out=tmp_path / "vol.png")
    assert isinstance(fig, mpl.figure.Figure) and (tmp_path / "vol.png").stat().st_size > 0


def _sweep_curves(rng):
    C, L, S = 12, 3, 4
    tokens = np.logspace(6, 11, C)
    base = np.interp(np.log10(tokens), [6, 8, 9.5, 11], [0.0, 0.1, 0.05, 0.12])
    score = base[:, None, None, None] * np.array([0.5, 1.0, 0.8])[None, :, None, None]
    score = score + rng.normal(0, 0.01, (C, L, S, 2 * 642))
    ds = xr.Dataset(
        {"score": (("checkpoint", "layer", "subject", "target"), score)},
        coords={"checkpoint": [f"s{i}" for i in range(C)], "tokens": ("checkpoint", tokens), "layer": [0, 1, 2],
                "subject": list("abcd")},
        attrs={"space": "fsaverage3"},
    )
    atlas = Atlas("halves", "fsaverage3", np.repeat([1, 2], 642), {1: "A", 2: "B"})
    return aggregate(ds, atlas=atlas), tokens


def test_plot_curves_bands_and_phases(rng):
    agg, tokens = _sweep_curves(rng)
    spans = [(1e6, 1e8, "rising"), (1e8, 3e9, "falling"), (3e9, 1e11, "rising")]
    fig = plot_curves(agg, phases=spans)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    lines = [ln for ln in ax.get_lines() if ln.get_label() in ("A", "B")]
    assert len(lines) == 2
    # the plotted curve is the subject mean at each checkpoint's best layer (mostly layer 1)
    mean = agg.score.sel(roi="A").mean("subject").transpose("checkpoint", "layer").values
    best = mean.argmax(axis=1)
    assert (best[1:] == 1).all()
    want = mean[np.arange(len(best)), best]
    np.testing.assert_allclose(lines[0].get_ydata(), want)
    np.testing.assert_allclose(lines[0].get_xdata(), tokens)
    bands = [c for c in ax.collections if isinstance(c, mpl.collections.FillBetweenPolyCollection)] \
        if hasattr(mpl.collections, "FillBetweenPolyCollection") else ax.collections
    assert len(bands) >= 2
    assert sum(isinstance(p, mpl.patches.Rectangle) or isinstance(p, mpl.patches.Polygon) for p in ax.patches) >= 3
    assert {t.get_text() for t in ax.texts} >= {"rising", "falling"}

    # phases as objects with start/end/label, a table, or a PhaseResult-like object
    class Seg:
        def __init__(self, s, e, lab):
            self.start, self.end, self.label = s, e, lab

    class Result:
        segments = [Seg(*s) for s in spans]
        intervals = np.array([[9e7, 1.1e8], [2e9, 4e9]])

    assert phase_spans(Result()) == [(float(a), float(b), c) for a, b, c in spans]
    import pandas as pd

    assert phase_spans(pd.DataFrame(spans, columns=["start", "end", "label"]))[1] == (1e8, 3e9, "falling")
    fig = plot_curves({"A": (tokens, want)}, phases=Result())
    assert len(fig.axes[0].get_lines()) >= 1
    with pytest.raises(ValidationError, match="finite interval"):
        phase_spans([(5.0, 1.0, "x")])
    with pytest.raises(ValidationError, match="no ROI"):
        plot_curves(agg, rois=["nope"])


def test_heatmap_and_aligned_curves(rng, tmp_path):
    agg, tokens = _sweep_curves(rng)
    fig = plot_layer_heatmap(agg, roi="B", out=tmp_path / "heat.png")
    im = fig.axes[0].get_images()[0]
    np.testing.assert_allclose(im.get_array(), agg.score_mean.sel(roi="B").transpose("layer", "checkpoint").values)
    assert (tmp_path / "heat.png").exists()
    with pytest.raises(ValidationError, match="roi="):
        plot_layer_heatmap(agg)

    curves = {"brain r": (tokens, np.log10(tokens)), "CKA to final": (tokens, 1 / np.log10(tokens)),
              "LAMBADA acc": (tokens, np.sqrt(tokens) / 1e5, np.full(len(tokens), 0.01))}
    fig = plot_aligned_curves(curves, phases=[(1e6, 1e8, "rising")])
    assert len(fig.axes) == 3 and all(a.get_xscale() == "log" for a in fig.axes)
    assert [a.get_ylabel() for a in fig.axes] == list(curves)
    one = plot_aligned_curves(curves, overlay=True)
    ys = [ln.get_ydata() for ln in one.axes[0].get_lines()]
    assert len(ys) == 3 and all(np.isclose(np.min(y), 0) and np.isclose(np.max(y), 1) for y in ys)
    with pytest.raises(ValidationError, match="same length"):
        plot_aligned_curves({"bad": (tokens, tokens[:-1])})
