"""ROI-level inference and the layer choice (issue 13).

* The best layer per checkpoint is chosen from the training-story CV score (Pearson r
  on the validation folds, ``cv_score``), by one helper (``brainalign.rois.choose_layer``)
  that ROI curves, ``Sweep.roi_curve``, ``rois.aggregate``, the plots and the report use.
* Block-bootstrap replicates of ROI-mean held-out r (``roi_boot``), drawn so replicate
  ``b`` uses the same test-story blocks at every checkpoint: intervals for every ROI
  score, paired differences between checkpoints with p-values.

Coverage is checked on the simulated data set, whose truth is known. The truth of an
interval must be the value of the quantity the data estimate, so the tests use as
prediction the true signal (a perfect model) and, for ROIs without signal, the signal of
other targets (true r = 0 exactly). A perfect model's correlation with a response that
is z-scored per story is ``sqrt(snr / (snr + v))``, where ``v`` is the expected
within-story variance of the (AR(1), unit-variance) noise once each story's mean is
removed: for 75-TR stories and phi = 0.5 it is 0.96, not 1 as in
``GroundTruth.expected_r`` (which holds for infinitely long stories). Against the
uncorrected ``expected_r`` the estimates are biased by +0.007, which is a property of the
truth formula, not of the intervals; the tests use the corrected truth (computed from the
simulation's parameters, not from the data).
"""

import numpy as np
import pytest
import xarray as xr

from brainalign import ValidationError, datasets
from brainalign.encoding import fit
from brainalign.encoding import bootstrap as bs
from brainalign.encoding.ridge import fit_ridge_cv, pearson_r, story_folds
from brainalign.features import WordFeatures
from brainalign.rois import aggregate, choose_layer
from brainalign.surfaces.atlases import Atlas
from brainalign.sweep import analyze

SIM = dict(space=300, features="random:8", snr=1.0)


def _within_noise_var(n: int, phi: float) -> float:
    """E[(1/n) sum (e_t - mean e)^2] for stationary unit-variance AR(1) noise."""
    k = np.arange(1, n)
    return float(1 - (n + 2 * ((n - k) * phi**k).sum()) / n**2)


# -- the CV score the layer is chosen by ---------------------------------------------------
@pytest.mark.parametrize("p, alphas, method", [(30, np.logspace(0, 6, 13), "primal"), (30, [1.0, 100.0], "primal"),
                                                (30, np.logspace(0, 6, 13), "kernel"), (150, np.logspace(0, 6, 13), "kernel")])
def test_cv_r_is_the_validation_pearson_r_at_the_chosen_alpha(rng, p, alphas, method):
    lengths = [24, 28, 20, 32, 26]
    n = sum(lengths)
    X = rng.standard_normal((n, p)).astype(np.float32)
    Y = (X @ (rng.standard_normal((p, 12)) * 0.1) + rng.standard_normal((n, 12))).astype(np.float32)
    Y[:, 0] = 0.0  # a constant target has no correlation
    res = fit_ridge_cv(X, Y, lengths, alphas=alphas, method=method, backend="numpy", progress=False)
    want = np.zeros(12)
    for tr, va in story_folds(lengths, 5):
        Xt, Xv = X[tr].astype(np.float64), X[va].astype(np.float64)
        K = Xt @ Xt.T
        for t in range(1, 12):  # ridge in its dual form: X_val X_tr' (K + alpha I)^-1 y
            pred = Xv @ (Xt.T @ np.linalg.solve(K + res.best_alphas[t] * np.eye(len(tr)), Y[tr, t]))
            want[t] += np.corrcoef(Y[va, t], pred)[0, 1] / 5
    assert np.isnan(res.cv_r[0])
    np.testing.assert_allclose(res.cv_r[1:], want[1:], atol=2e-6)


# -- fit: cv_score and roi_boot -------------------------------------------------------------
def _features(ds, weights, seed=0):
    """WordFeatures: layer 1 = ``w`` x the simulation's own word features + noise, layer 0 unrelated."""
    from brainalign.datasets.simulated import word_embedding_features

    src = word_embedding_features(8)
    rng = np.random.default_rng(seed)
    out = []
    for i, w in enumerate(weights):
        feats = {}
        for name, st in ds.stories.items():
            feats[(name, 1)] = (w * src(st) + (1 - w) * rng.standard_normal((st.n_words, 8))).astype(np.float32)
            feats[(name, 0)] = rng.standard_normal((st.n_words, 8)).astype(np.float32)
        out.append(WordFeatures("toy", f"step{i}", [0, 1], 2, feats, list(ds.stories),
                                training={"step": i, "tokens": 10.0 ** (6 + i)}))
    return out


@pytest.fixture(scope="module")
def sim():
    return datasets.load("simulated", stories=5, n_subjects=2, seed=3, **SIM)


def test_fit_returns_cv_score_and_paired_bootstrap_replicates(sim):
    from brainalign.encoding.api import load_responses
    from brainalign.features import design

    gt = sim.ground_truth
    labels = gt.roi_labels["sim01"]
    wf = _features(sim, [1.0])[0]
    kw = dict(backend="numpy", progress=False, alphas=np.logspace(0, 4, 5), n_folds=3)
    res = fit(wf, sim, rois=labels, n_boot=50, **kw)
    assert res.cv_score.dims == ("layer", "subject", "target")
    assert res.roi_boot.dims == ("layer", "subject", "roi", "boot") and res.sizes["boot"] == 50
    assert list(res.roi.values) == ["label_1", "label_2", "label_3", "label_4"]
    assert res.attrs["boot_blocks"] == 4 and res.attrs["boot_block_length"] == 20
    # the informative layer has the better CV score where the simulation planted signal
    planted = labels > 0
    cv = res.cv_score.sel(subject="sim01").values
    assert cv[1, planted].mean() > 0.3 > abs(cv[0, planted].mean())
    # roi_score is the ROI mean of the held-out score, and the replicates are what the
    # bootstrap module gives for the same predictions
    codes = [1, 2, 3, 4]
    for li, layer in enumerate([0, 1]):
        s = res.score.sel(layer=layer, subject="sim02").values
        np.testing.assert_allclose(res.roi_score.sel(layer=layer, subject="sim02").values,
                                   [s[labels == c].mean() for c in codes], rtol=1e-5)
    train, test = sim.train_stories_of("sim02"), sim.test_stories_of("sim02")
    X = design(wf, [sim.stories[s] for s in train], 1)
    Xt = design(wf, [sim.stories[s] for s in test], 1)
    y = load_responses(sim, "sim02", train)
    yt = load_responses(sim, "sim02", test)
    r = fit_ridge_cv(X, y, [sim.stories[s].n_trs for s in train], X_test=Xt, Y_test=yt, alphas=np.logspace(0, 4, 5),
                     n_folds=3, backend="numpy", progress=False)
    want = bs.roi_bootstrap(yt, r.predictions, [sim.stories[s].n_trs for s in test], labels, codes, n_boot=50,
                            chunk=7)
    np.testing.assert_allclose(res.roi_boot.sel(layer=1, subject="sim02").values.T, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.cv_score.sel(layer=1, subject="sim02").values, r.cv_r, rtol=1e-6)
    # the same blocks in every replicate whatever else changes: draws depend on
    # (n_blocks, n_boot, seed) only
    np.testing.assert_array_equal(bs.block_draws(4, 50, 0), bs.block_draws(4, 50, 0))
    assert not np.array_equal(bs.block_draws(4, 50, 0), bs.block_draws(4, 50, 1))
    again = fit(wf, sim, rois=labels, n_boot=50, layers=[1], subjects=["sim02"], **kw)
    np.testing.assert_array_equal(again.roi_boot.values[0, 0], res.roi_boot.sel(layer=1, subject="sim02").values)
    # a named atlas and bad input
    whole = fit(wf, sim, rois="whole_cortex", n_boot=10, layers=[1], **kw)
    assert list(whole.roi.values) == ["whole_cortex"]
    with pytest.raises(ValidationError, match="has 7 targets"):
        fit(wf, sim, rois=np.ones(7, int), **kw)


def test_blocks_stay_within_stories():
    b = bs.tr_blocks([74, 65, 5, 30], 20)
    # 74 -> 20, 20, 20, 14 (14 >= half a block: its own); 65 -> 20, 20, 25 (5 joins); 5 -> 5; 30 -> 20, 10
    sizes = np.bincount(b)
    assert sizes.tolist() == [20, 20, 20, 14, 20, 20, 25, 5, 20, 10]
    with pytest.raises(ValidationError, match="block_length"):
        bs.tr_blocks([10], 0)


def test_replicate_r_and_chunks(rng):
    y = rng.standard_normal((90, 40))
    p = y + rng.standard_normal((90, 40))
    blocks = bs.tr_blocks([50, 40], 10)
    S = bs.block_sums(y, p, blocks)
    np.testing.assert_allclose(bs.replicate_r(S, np.ones((1, S.shape[1])))[0], pearson_r(y, p), rtol=1e-12)
    counts = bs.block_draws(S.shape[1], 30, 4)
    r = bs.replicate_r(S, counts)
    rows = np.concatenate([np.flatnonzero(blocks == k) for k in range(S.shape[1]) for _ in range(int(counts[3, k]))])
    np.testing.assert_allclose(r[3], pearson_r(y[rows], p[rows]), rtol=1e-10)
    labels = np.repeat([1, 2, 0, 3], 10)
    a = bs.roi_bootstrap(y, p, [50, 40], labels, [1, 2, 3], n_boot=30, block_length=10, seed=4, chunk=3)
    b = bs.roi_bootstrap(y, p, [50, 40], labels, [1, 2, 3], n_boot=30, block_length=10, seed=4, chunk=1000)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(a[:, 0], r[:, :10].mean(1), rtol=1e-10)


# -- coverage on simulated data (the acceptance test) ----------------------------------------
def _smooth(rng, lengths, T, phi=0.9):
    from scipy.signal import lfilter

    from brainalign.timing import zscore

    return np.concatenate([zscore(lfilter([1.0], [1.0, -phi], rng.standard_normal((n + 50, T)), axis=0)[50:])
                           for n in lengths])


def _as_store(boot, est, n_blocks, subjects):
    """Per-subject replicates (subject, roi, boot) and estimates (subject, roi) as a
    one-checkpoint, one-layer store for the analysis functions."""
    S, R, B = boot.shape
    return xr.Dataset(
        {"roi_boot": (("checkpoint", "layer", "subject", "roi", "boot"), boot[None, None]),
         "roi_score": (("checkpoint", "layer", "subject", "roi"), est[None, None])},
        coords={"checkpoint": ["c"], "layer": [0], "subject": subjects[:S], "roi": [f"r{i}" for i in range(R)],
                "boot": np.arange(B)},
        attrs={"bootstrap": {"n_boot": B, "block_length": 20, "seed": 0, "n_blocks": n_blocks}},
    )


@pytest.fixture(scope="module")
def coverage():
    """Interval hits over seeded simulations: 40 seeds x 3 subjects x (4 planted ROIs with
    the true signal as prediction + 4 ROIs without signal, predicted by other targets'
    signals). Held-out set: the four training stories (single presentations, ~300 TRs,
    15 blocks of 20 TRs: the size of ds003020's test story), which a perfect model does
    not need to be fitted on."""
    hits: dict = {}
    paired_p: dict = {"t": [], "percentile": []}
    for seed in range(40):
        ds = datasets.load("simulated", stories=5, n_subjects=3, seed=seed, **SIM)
        gt = ds.ground_truth
        sts = ds.train_stories
        lengths = [ds.stories[s].n_trs for s in sts]
        nb = int(bs.tr_blocks(lengths)[-1]) + 1
        v = np.average([_within_noise_var(n, gt.ar) for n in lengths], weights=lengths)
        rng = np.random.default_rng([seed, 5])
        boots, ests, truths, boots_a, boots_b, d_hat = [], [], [], [], [], []
        for subj in ds.subjects:
            y = np.concatenate([ds.responses(subj, s) for s in sts])
            sig = np.concatenate([gt.signal(subj, s) for s in sts])
            lab = gt.roi_labels[subj]
            null, resp = np.flatnonzero(lab == 0), np.flatnonzero(lab > 0)
            pred = sig.copy()
            pred[:, null] = sig[:, resp[np.arange(null.size) % resp.size]]
            labels = lab.copy()
            labels[null] = 10 + np.arange(null.size) * 4 // null.size
            codes = [1, 2, 3, 4, 10, 11, 12, 13]
            snr = gt.snr_map[subj]
            truth = np.sqrt(snr / (snr + v))
            truths.append([truth[labels == c].mean() for c in codes])
            boots.append(bs.roi_bootstrap(y, pred, lengths, labels, codes, seed=seed).T)
            r = pearson_r(y, pred)
            ests.append([r[labels == c].mean() for c in codes])
            # two models of equal true score (the prediction + independent smooth noise
            # of the same size): their paired difference is null
            pa, pb = pred + _smooth(rng, lengths, 300), pred + _smooth(rng, lengths, 300)
            boots_a.append(bs.roi_bootstrap(y, pa, lengths, labels, codes, seed=seed).T)
            boots_b.append(bs.roi_bootstrap(y, pb, lengths, labels, codes, seed=seed).T)
            ra, rb = pearson_r(y, pa), pearson_r(y, pb)
            d_hat.append([rb[labels == c].mean() - ra[labels == c].mean() for c in codes])
        boots, ests, truths = np.array(boots), np.array(ests), np.array(truths)
        one = _as_store(boots, ests, nb, ds.subjects)
        for method in ("t", "percentile"):
            ivs = analyze.roi_intervals(one, method=method, subjects="fixed")
            lo, hi = ivs.lo_subject.values[:, 0, 0].T, ivs.hi_subject.values[:, 0, 0].T  # subject x roi
            h = (lo <= truths) & (truths <= hi)
            hits.setdefault((method, "subject", "signal"), []).extend(h[:, :4].ravel())
            hits.setdefault((method, "subject", "null"), []).extend(h[:, 4:].ravel())
            for who in ("fixed", "resample"):
                iv = analyze.roi_intervals(one, method=method, subjects=who)
                m = truths.mean(0)
                h = (iv.lo.values[:, 0, 0] <= m) & (m <= iv.hi.values[:, 0, 0])
                hits.setdefault((method, who, "signal"), []).extend(h[:4])
                hits.setdefault((method, who, "null"), []).extend(h[4:])
            # paired differences between two "checkpoints" of equal truth
            two = xr.concat([_as_store(np.array(boots_a), ests, nb, ds.subjects),
                             _as_store(np.array(boots_b), ests + np.array(d_hat), nb, ds.subjects)
                             .assign_coords(checkpoint=["d"])], "checkpoint")
            diff = analyze.checkpoint_difference(two, "c", "d", layer=0, method=method, subjects="fixed")
            np.testing.assert_allclose(diff.difference.values, np.array(d_hat).mean(0), rtol=1e-6, atol=1e-9)
            paired_p[method].extend(diff.pvalue.values)
    return {k: float(np.mean(v)) for k, v in hits.items()}, {k: np.array(v) for k, v in paired_p.items()}


def test_roi_intervals_cover_the_truth_on_simulated_data(coverage):
    cov, _ = coverage
    print({" ".join(k): round(v, 4) for k, v in cov.items()})
    # the default (t with n_blocks - 1 degrees of freedom around the bootstrap SD):
    # nominal where the truth is r = 0, conservative where the simulation planted
    # signal (its per-story z-scored signal has no story-to-story variance, which the
    # block bootstrap, made for new stories, counts)
    assert 0.90 <= cov[("t", "subject", "null")] <= 0.98
    assert 0.90 <= cov[("t", "subject", "signal")] <= 0.995
    assert 0.90 <= cov[("t", "fixed", "null")] <= 0.98
    # percentiles of the replicates (the textbook block bootstrap): nominal with signal,
    # too narrow at r = 0 with the ~15 blocks of a test story
    assert 0.90 <= cov[("percentile", "subject", "signal")] <= 0.98
    assert 0.85 <= cov[("percentile", "subject", "null")] < 0.95
    # resampling subjects as well counts the within-subject noise twice: conservative
    assert cov[("t", "resample", "signal")] >= 0.95 and cov[("t", "resample", "null")] >= 0.95


def test_paired_differences_hold_their_level(coverage):
    _, p = coverage
    print({k: round(float((v < 0.05).mean()), 4) for k, v in p.items()})
    assert 0.02 <= (p["t"] < 0.05).mean() <= 0.08
    assert (p["percentile"] < 0.05).mean() >= (p["t"] < 0.05).mean()  # why t is the default


# -- the layer choice: one rule, on the training stories -------------------------------------
def _roi_results(held_out, cv):
    """roi_score / roi_cv_score (checkpoint, layer, subject, roi) from (C, L, S) arrays."""
    C, L, S = held_out.shape
    dims = ("checkpoint", "layer", "subject", "roi")
    return xr.Dataset(
        {"roi_score": (dims, held_out[..., None]), "roi_cv_score": (dims, cv[..., None])},
        coords={"checkpoint": [f"c{i}" for i in range(C)], "tokens": ("checkpoint", 10.0 ** np.arange(6, 6 + C)),
                "layer": np.arange(L), "depth": ("layer", np.arange(L) / L), "subject": [f"s{i}" for i in range(S)],
                "roi": ["A"]},
    )


def test_best_layer_is_chosen_by_the_cv_score_with_one_nan_rule(caplog):
    held = np.array([[[0.30, 0.32], [0.20, 0.22], [0.10, 0.12]],      # held-out prefers layer 0
                     [[0.10, np.nan], [0.40, 0.40], [0.50, 0.50]]])
    cv = np.array([[[0.05, 0.05], [0.25, 0.27], [0.10, 0.10]],         # CV prefers layer 1
                   [[0.90, np.nan], [np.nan, np.nan], [0.20, 0.20]]])  # layer 1 has no CV value: never chosen
    res = _roi_results(held, cv)
    ch = choose_layer(res.roi_score, res.roi_cv_score)
    assert ch.attrs["layer_rule"] == "cv"
    # checkpoint 1: layer 0's criterion is the mean over the subjects that have one (0.9)
    np.testing.assert_array_equal(ch.best_layer.sel(roi="A").values, [1, 0])
    np.testing.assert_allclose(ch.score.sel(roi="A", checkpoint="c0").values, [0.20, 0.22])  # held-out there
    np.testing.assert_allclose(ch.score_mean.sel(roi="A").values, [0.21, 0.10])
    np.testing.assert_allclose(ch.best_depth.sel(roi="A").values, [1 / 3, 0])
    # the held-out rule only when asked, or when there is no CV score (with a warning)
    np.testing.assert_array_equal(choose_layer(res.roi_score, rule="test").best_layer.sel(roi="A").values, [0, 2])
    with caplog.at_level("WARNING", logger="brainalign.rois"):
        assert choose_layer(res.roi_score).attrs["layer_rule"] == "test"
    assert "held-out score itself" in caplog.text
    with pytest.raises(ValidationError, match="needs training-story CV scores"):
        choose_layer(res.roi_score, rule="cv")
    # no finite criterion anywhere: no layer, NaN scores
    assert choose_layer(res.roi_score, res.roi_cv_score * np.nan).attrs["layer_rule"] == "test"
    allnan = res.roi_cv_score.copy(data=np.full(cv.shape + (1,), np.nan))
    allnan[0, 0, 0, 0] = 0.1
    got = choose_layer(res.roi_score, allnan)
    assert got.best_layer.sel(roi="A").values[0] == 0 and np.isnan(got.best_layer.sel(roi="A").values[1])
    assert np.isnan(got.score.sel(roi="A", checkpoint="c1")).all()
    # ROI curves use it
    curves = analyze.roi_curves(res)
    np.testing.assert_array_equal(curves.best_layer.sel(roi="A").values, [1, 0])
    np.testing.assert_allclose(curves.score_mean.sel(roi="A").values, [0.21, 0.10])
    assert curves.attrs["layer_rule"] == "cv"


def test_aggregate_and_plots_choose_by_cv(rng):
    import matplotlib as mpl

    from brainalign.plotting import plot_curves, plot_layer_heatmap

    C, L, S, T = 4, 3, 2, 2 * 642
    score = rng.normal(0, 0.01, (C, L, S, T))
    score[:, 0] += 0.3  # the held-out score favours layer 0 ...
    cv = rng.normal(0, 0.01, (C, L, S, T))
    cv[:, 2] += 0.2  # ... the training stories favour layer 2
    dims = ("checkpoint", "layer", "subject", "target")
    res = xr.Dataset({"score": (dims, score), "cv_score": (dims, cv)},
                     coords={"checkpoint": list("abcd"), "tokens": ("checkpoint", [1e6, 1e7, 1e8, 1e9]),
                             "layer": [0, 1, 2], "subject": ["s1", "s2"]}, attrs={"space": "fsaverage3"})
    atlas = Atlas("halves", "fsaverage3", np.repeat([1, 2], 642), {1: "A", 2: "B"})
    agg = aggregate(res, atlas=atlas)
    assert agg.attrs["layer_rule"] == "cv" and "cv_score_mean" in agg
    assert (agg.best_layer.values == 2).all()
    np.testing.assert_allclose(agg.best_score.values, agg.score_mean.sel(layer=2).values)
    fig = plot_curves(agg)
    line = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "A"][0]
    np.testing.assert_allclose(line.get_ydata(), agg.score_mean.sel(roi="A", layer=2).values)
    # the heatmap marks the chosen layer, not the held-out argmax
    fig = plot_layer_heatmap(agg, roi="A")
    dots = [ln for ln in fig.axes[0].get_lines()][0]
    np.testing.assert_array_equal(dots.get_ydata(), [2, 2, 2, 2])
    # intervals, when given, are the band
    curves = xr.Dataset({"score": agg.score.sel(layer=2).drop_vars(["layer", "depth"]),
                         "score_lo": agg.score_mean.sel(layer=2, drop=True) - 0.05,
                         "score_hi": agg.score_mean.sel(layer=2, drop=True) + 0.07})
    fig = plot_curves(curves, rois=["A"])
    band = fig.axes[0].collections[0]
    ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
    mean = agg.score_mean.sel(roi="A", layer=2).values
    assert np.isclose(ys.min(), (mean - 0.05).min()) and np.isclose(ys.max(), (mean + 0.07).max())
    assert isinstance(band, mpl.collections.Collection)


# -- sweeps: stored, analysed, reported --------------------------------------------------------
@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    from brainalign.datasets import _corpus
    from brainalign.sweep import run
    from brainalign.training import train_tiny

    out = tmp_path_factory.mktemp("inference")
    tiny = train_tiny(_corpus.stories_dir(), out / "model", n_layers=2, hidden=32, heads=2, seq_len=32,
                      steps=20, batch_size=4, checkpoints=3, seed=0)
    cfg = {
        "dataset": {"name": "simulated", "options": {"space": 400, "stories": 4, "features": "random:8", "n_subjects": 2,
                                                     "snr": 2.0}},
        "model": {"name": str(tiny.out_dir)},
        "layers": "all",
        "features": {"context_tokens": 32, "batch_size": 8},
        "encoding": {"alphas": {"logspace": [0, 4, 5]}, "n_folds": 3},
        "output": {"store": str(out / "results.zarr")},
    }
    return run(cfg, progress=False), cfg


def test_sweep_stores_cv_scores_and_replicates(sweep_store):
    sweep, _ = sweep_store
    res = sweep.results
    for v in ("cv_score", "roi_cv_score", "roi_boot"):
        assert v in res and np.isfinite(res[v].values).all(), v
    assert res.roi_boot.dims == ("checkpoint", "layer", "subject", "roi", "boot") and res.sizes["boot"] == 200
    assert res.attrs["bootstrap"]["n_blocks"] == 4 and res.attrs["layer_rule"] == "cv"
    # the stored ROI CV score is the ROI mean of the stored target CV score (rois.how: mean)
    np.testing.assert_allclose(res.roi_cv_score.sel(roi="whole_cortex").values, res.cv_score.mean("target").values,
                               rtol=1e-5)
    # the chosen layers: the same in Sweep.roi_curve, roi_curves and choose_layer
    want = res.roi_cv_score.sel(roi="whole_cortex").mean("subject").argmax("layer").values
    curve = sweep.roi_curve("whole_cortex")
    np.testing.assert_array_equal(curve.layer.values, res.layer.values[want])
    assert curve.attrs["layer_rule"] == "cv" and curve.dims == ("checkpoint", "subject")
    curves = analyze.roi_curves(res)
    np.testing.assert_array_equal(curves.best_layer.sel(roi="whole_cortex").values, res.layer.values[want])
    np.testing.assert_allclose(curves.score.sel(roi="whole_cortex").values, curve.values, rtol=1e-6)
    # intervals around the curve, and paired differences
    assert (curves.score_lo <= curves.score_mean).all() and (curves.score_mean <= curves.score_hi).all()
    ivs = analyze.roi_intervals(res)
    assert ivs.lo.dims == ("roi", "checkpoint", "layer") and (ivs.lo <= ivs.hi).all()
    cons = analyze.consecutive_differences(res)
    assert cons.sizes["pair"] == res.sizes["checkpoint"] - 1
    assert ((cons.pvalue >= 0) & (cons.pvalue <= 1)).all()
    a, b = res.checkpoint.values[0], res.checkpoint.values[-1]
    d = analyze.checkpoint_difference(res, a, b, subjects="fixed")
    np.testing.assert_allclose(d.difference.values, curves.score_mean.sel(checkpoint=b).values
                               - curves.score_mean.sel(checkpoint=a).values, rtol=1e-5)
    with pytest.raises(ValidationError, match="no done checkpoint"):
        analyze.checkpoint_difference(res, a, "nope")


def test_report_states_the_layer_rule_and_the_intervals(sweep_store, tmp_path):
    sweep, _ = sweep_store
    html = analyze.report(sweep.path, tmp_path / "report.html", internal=False, movie=False).read_text()
    assert "cross-validated score on the training stories" in html
    assert "block bootstrap over the test stories" in html and "block-bootstrap intervals of the subject mean" in html
    assert "p (two-sided bootstrap)" in html


def test_a_store_of_the_old_layout_is_refused_before_any_work(sweep_store, tmp_path):
    import json
    import shutil

    from brainalign.sweep import run
    from brainalign.sweep.store import IncompatibleStoreError

    sweep, cfg = sweep_store
    old = tmp_path / "old.zarr"
    shutil.copytree(sweep.path, old)
    layout = json.loads((old / ".brainalign" / "layout.json").read_text())
    for key in ("variables", "bootstrap"):
        layout.pop(key)
    (old / ".brainalign" / "layout.json").write_text(json.dumps(layout))
    before = sorted(p.name for p in (old / ".brainalign" / "done").iterdir())
    with pytest.raises(IncompatibleStoreError, match="bootstrap, variables differ"):
        run({**cfg, "output": {"store": str(old)}}, progress=False)
    assert sorted(p.name for p in (old / ".brainalign" / "done").iterdir()) == before
    # reading it still works; without CV scores its curves say they chose on the test story
    res = sweep.results.drop_vars(["roi_cv_score", "cv_score", "roi_boot"])
    curves = analyze.roi_curves(res)
    assert curves.attrs["layer_rule"] == "test" and "score_lo" not in curves
