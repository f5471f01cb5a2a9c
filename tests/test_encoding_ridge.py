"""The ridge core against himalaya's own estimators, on the same story splits."""

import contextlib

import numpy as np
import pytest

from brainalign import ValidationError
from brainalign.encoding import fit_ridge_cv, fit_ridge_cv_many, pearson_r, r2_score, story_folds
from brainalign.encoding._backend import _try_backend

ALPHAS = np.logspace(0, 6, 13)
GPU_BACKENDS = ("torch_cuda", "cupy")


@pytest.fixture(autouse=True)
def _himalaya_global_unchanged():
    """Every test leaves himalaya's global backend as it found it (and checks the library does)."""
    from himalaya.backend import get_backend

    before = get_backend().name
    yield
    assert get_backend().name == before, "himalaya's global backend was changed"


@contextlib.contextmanager
def himalaya_global(name):
    """himalaya's global backend set to ``name`` for the block (for himalaya's own estimators)."""
    from himalaya.backend import get_backend, set_backend

    previous = get_backend().name
    b = set_backend(name)
    try:
        yield b
    finally:
        set_backend(previous)


def _problem(rng, n, p, t, n_test=120, n_stories=10):
    lengths = [n // n_stories] * n_stories
    lengths[-1] += n - sum(lengths)
    X = rng.standard_normal((n, p)).astype(np.float32)
    Xt = rng.standard_normal((n_test, p)).astype(np.float32)
    # targets with a range of signal strengths (so alphas spread over the grid)
    W = rng.standard_normal((p, t)) * np.exp(rng.uniform(-4, 0, t)) / np.sqrt(p)
    Y = (X @ W + rng.standard_normal((n, t))).astype(np.float32)
    Yt = (Xt @ W + rng.standard_normal((n_test, t))).astype(np.float32)
    return X, Y, Xt, Yt, lengths


def _himalaya(cls_name, X, Y, Xt, folds, backend, **kw):
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    with himalaya_global(backend) as b:
        cls = RidgeCV if cls_name == "ridge" else KernelRidgeCV
        m = cls(alphas=ALPHAS, cv=folds, **kw).fit(X, Y)
        return (b.to_numpy(m.best_alphas_), b.to_numpy(m.cv_scores_), b.to_numpy(m.predict(Xt)),
                b.to_numpy(m.coef_) if cls_name == "ridge" else None)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_primal_matches_himalaya_ridgecv(rng, backend):
    X, Y, Xt, Yt, lengths = _problem(rng, 1000, 200, 600)
    folds = story_folds(lengths, 5)
    res = fit_ridge_cv(X, Y, lengths, alphas=ALPHAS, X_test=Xt, Y_test=Yt, backend=backend,
                       return_coef=True, progress=False)
    assert res.method == "primal"
    alphas, cv, pred, coef = _himalaya("ridge", X, Y, Xt, folds, "numpy")  # the reference
    assert len(np.unique(res.best_alpha_index)) >= 5  # the check is not trivial
    np.testing.assert_allclose(res.best_alphas, alphas, rtol=1e-5)
    np.testing.assert_allclose(res.cv_scores, cv, atol=1e-4)
    np.testing.assert_allclose(res.predictions, pred, atol=1e-4)
    np.testing.assert_allclose(res.coef, coef, atol=1e-5)
    np.testing.assert_allclose(res.score, pearson_r(Yt, pred), atol=1e-4)
    np.testing.assert_allclose(res.r2, r2_score(Yt, pred), atol=1e-4)


def test_kernel_matches_himalaya_kernelridgecv(rng):
    # more features than samples: the kernel form is chosen
    X, Y, Xt, Yt, lengths = _problem(rng, 400, 1000, 400)
    folds = story_folds(lengths, 5)
    res = fit_ridge_cv(X, Y, lengths, alphas=ALPHAS, X_test=Xt, Y_test=Yt, backend="torch", progress=False)
    assert res.method == "kernel"
    alphas, cv, pred, _ = _himalaya("kernel", X, Y, Xt, folds, "numpy", kernel="linear")
    assert len(np.unique(res.best_alpha_index)) >= 4
    np.testing.assert_allclose(res.best_alphas, alphas, rtol=1e-5)
    np.testing.assert_allclose(res.cv_scores, cv, atol=1e-4)
    np.testing.assert_allclose(res.score, pearson_r(Yt, pred), atol=1e-4)


def test_primal_and_kernel_agree_and_chunks_do_not_matter(rng):
    X, Y, Xt, Yt, lengths = _problem(rng, 400, 120, 90)
    a = fit_ridge_cv(X, Y, lengths, X_test=Xt, backend="numpy", method="primal", progress=False)
    b = fit_ridge_cv(X, Y, lengths, X_test=Xt, backend="numpy", method="kernel", progress=False)
    c = fit_ridge_cv(X, Y, lengths, X_test=Xt, backend="numpy", n_targets_batch=7, progress=False)
    np.testing.assert_array_equal(a.best_alpha_index, b.best_alpha_index)
    np.testing.assert_allclose(a.predictions, b.predictions, atol=1e-4)
    np.testing.assert_array_equal(a.best_alpha_index, c.best_alpha_index)
    np.testing.assert_allclose(a.predictions, c.predictions, atol=1e-5)


def test_subjects_sharing_a_design_equal_separate_fits(rng):
    X, Y, Xt, Yt, lengths = _problem(rng, 500, 60, 80)
    Y2 = Y[:, ::-1] + 0.5 * rng.standard_normal(Y.shape).astype(np.float32)
    both = fit_ridge_cv_many(X, [Y, Y2[:, :50]], lengths, X_test=Xt, Y_test=[Yt, Yt[:, ::-1][:, :50]],
                             backend="numpy", progress=False)
    one = fit_ridge_cv(X, Y2[:, :50], lengths, X_test=Xt, Y_test=Yt[:, ::-1][:, :50], backend="numpy",
                       progress=False)
    assert isinstance(both, list) and len(both) == 2
    assert both[1].predictions.shape == (Xt.shape[0], 50)
    np.testing.assert_array_equal(both[1].best_alpha_index, one.best_alpha_index)
    np.testing.assert_allclose(both[1].score, one.score, atol=1e-6)
    # the old list form of fit_ridge_cv still works, warns, and gives the same list
    with pytest.warns(DeprecationWarning, match="fit_ridge_cv_many"):
        old = fit_ridge_cv(X, [Y, Y2[:, :50]], lengths, X_test=Xt, Y_test=[Yt, Yt[:, ::-1][:, :50]],
                           backend="numpy", progress=False)
    assert isinstance(old, list) and len(old) == 2
    for a, b in zip(old, both):
        np.testing.assert_array_equal(a.best_alpha_index, b.best_alpha_index)
        np.testing.assert_array_equal(a.predictions, b.predictions)


def test_explicit_non_partition_cv(rng):
    # folds whose validation sets do not cover the data take the direct route
    X, Y, Xt, Yt, lengths = _problem(rng, 300, 40, 30)
    idx = np.arange(300)
    cv = [(idx[100:], idx[:50]), (idx[:200], idx[250:])]
    res = fit_ridge_cv(X, Y, cv=cv, X_test=Xt, backend="numpy", progress=False)
    alphas, _, pred, _ = _himalaya("ridge", X, Y, Xt, cv, "numpy")
    np.testing.assert_allclose(res.best_alphas, alphas, rtol=1e-5)
    np.testing.assert_allclose(res.predictions, pred, atol=1e-4)


def _low_rank_problem(rng, n, p, rank, t, n_test=100, n_stories=10):
    """A design of rank ``rank`` < min(n, p): a run of (near-)zero eigenvalues in every fold."""
    X, Y, Xt, Yt, lengths = _problem(rng, n, p, t, n_test, n_stories)
    M = rng.standard_normal((rank, p)).astype(np.float32) / np.sqrt(rank)
    X = (X[:, :rank] @ M).astype(np.float32)
    Xt = (Xt[:, :rank] @ M).astype(np.float32)
    W = rng.standard_normal((p, t)) * np.exp(rng.uniform(-4, 0, t)) / np.sqrt(p)
    Y = (X @ W + rng.standard_normal((n, t))).astype(np.float32)
    Yt = (Xt @ W + rng.standard_normal((n_test, t))).astype(np.float32)
    return X, Y, Xt, Yt, lengths


@pytest.mark.parametrize("method", ["primal", "kernel"])
def test_both_validation_routes_equal_a_float64_reference(rng, method):
    # the alpha-free route (partial fractions over the fold's eigenvalues) and the
    # direct route (one prediction per alpha) give the same validation errors as float64
    # arithmetic, also on a rank-deficient design whose zero eigenvalues form one run
    from brainalign.encoding._backend import resolve_backend
    from brainalign.encoding.ridge import _PF_KEYS, _Kernel, _Primal, _validation_sse

    n, p = (600, 80) if method == "primal" else (300, 700)
    X, Y, _, _, lengths = _low_rank_problem(rng, n, p, 50, 40)
    b = resolve_backend("numpy")
    folds = story_folds(lengths, 5)
    dec = (_Primal if method == "primal" else _Kernel)(b, X, folds, ALPHAS.astype(np.float32).astype(np.float64), None)
    for f, (tr, va) in zip(dec.folds, folds):
        assert "H" in f and f["G_runs"], "the alpha-free route and its eigenvalue runs are exercised"
        Z = f["V"].T @ (X[tr].T @ Y[tr] if method == "primal" else Y[tr])
        direct = {k: v for k, v in f.items() if k not in _PF_KEYS}
        A64 = f["A"].astype(np.float64)
        D64 = f["D"].astype(np.float64)
        ref = np.stack([((Y[va] - A64 @ (d[:, None] * Z.astype(np.float64))) ** 2).sum(0) for d in D64])
        for route in (f, direct):
            sse = np.asarray(_validation_sse(b, route, Z, Y[va]), dtype=np.float64)
            np.testing.assert_allclose(sse, ref, rtol=2e-5)


def test_small_alpha_grid_takes_the_direct_route_and_matches_himalaya(rng):
    X, Y, Xt, Yt, lengths = _low_rank_problem(rng, 500, 200, 40, 50)
    alphas = np.array([1.0, 100.0, 1e4])
    res = fit_ridge_cv(X, Y, lengths, alphas=alphas, X_test=Xt, backend="numpy", progress=False)
    from brainalign.encoding._backend import resolve_backend
    from brainalign.encoding.ridge import _Primal

    dec = _Primal(resolve_backend("numpy"), X, story_folds(lengths, 5), alphas, None)
    assert not any("H" in f for f in dec.folds)  # 3 alphas: one GEMM each is cheaper
    from himalaya.ridge import RidgeCV

    with himalaya_global("numpy"):
        m = RidgeCV(alphas=alphas, cv=story_folds(lengths, 5)).fit(X, Y)
        pred = m.predict(Xt)
    assert len(np.unique(res.best_alpha_index)) >= 2
    np.testing.assert_allclose(res.best_alphas, m.best_alphas_, rtol=1e-5)
    np.testing.assert_allclose(res.predictions, pred, atol=1e-4)


def test_r2_fold_score_matches_himalaya(rng):
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import r2_score as h_r2

    X, Y, Xt, Yt, lengths = _problem(rng, 600, 100, 200)
    Y[:, 0] = 0.0  # a constant target: R^2 is 0 for every alpha, largest alpha wins the tie
    res = fit_ridge_cv(X, Y, lengths, X_test=Xt, backend="torch", alpha_criterion="r2", progress=False)
    # the old keyword still works, with a DeprecationWarning, and means the same
    with pytest.warns(DeprecationWarning, match="score_func= is deprecated, use alpha_criterion="):
        old = fit_ridge_cv(X, Y, lengths, X_test=Xt, backend="torch", score_func="r2", progress=False)
    np.testing.assert_array_equal(old.best_alpha_index, res.best_alpha_index)
    with himalaya_global("numpy"), np.errstate(invalid="ignore"):  # himalaya divides by the constant target's zero variance
        m = RidgeCV(alphas=ALPHAS, cv=story_folds(lengths, 5), solver_params=dict(score_func=h_r2)).fit(X, Y)
    # float32 rounding (himalaya's) can decide near-ties (scores 1e-7 apart; float64 sided with us):
    # almost all alphas are the same, and where one differs its score is as good
    assert np.isclose(res.best_alphas, m.best_alphas_, rtol=1e-5).mean() >= 0.98
    np.testing.assert_allclose(res.cv_scores, m.cv_scores_, atol=1e-5)
    assert len(np.unique(res.best_alpha_index)) >= 4
    assert res.best_alphas[0] == np.float32(ALPHAS[-1])


def test_bad_input_is_named(rng):
    X = rng.standard_normal((100, 5))
    Y = rng.standard_normal((100, 3))
    with pytest.raises(ValidationError, match="story_lengths"):
        fit_ridge_cv(X, Y)
    with pytest.raises(ValidationError, match="sum to 90"):
        fit_ridge_cv(X, Y, [30, 30, 30])
    with pytest.raises(ValidationError, match="rows but X has"):
        fit_ridge_cv(X, Y[:50], [50, 50])
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(ValidationError, match="X contains NaN"):
        fit_ridge_cv(Xn, Y, [20] * 5)
    with pytest.raises(ValidationError, match="alphas"):
        fit_ridge_cv(X, Y, [20] * 5, alphas=[-1.0, 1.0])
    with pytest.raises(ValidationError, match="n_splits"):
        fit_ridge_cv(X, Y, [50, 50], n_folds=5)
    with pytest.raises(ValidationError, match="backend"):
        fit_ridge_cv(X, Y, [20] * 5, backend="tpu")
    with pytest.raises(ValidationError, match="method"):
        fit_ridge_cv(X, Y, [20] * 5, method="dual")


def test_library_leaves_himalayas_global_backend_as_it_found_it(rng):
    # a user's global backend survives fits with another backend: the array core, the
    # banded ridge of variance partitioning (which runs himalaya's own estimators), auto
    from brainalign.encoding import partition_variance_arrays

    X, Y, Xt, Yt, lengths = _problem(rng, 300, 20, 10, n_test=60)
    for user in ("torch", "numpy"):
        with himalaya_global(user):
            from himalaya.backend import get_backend

            for backend in ("numpy", "torch", "auto"):
                fit_ridge_cv(X, Y, lengths, X_test=Xt, backend=backend, progress=False)
                assert get_backend().name == user, (user, backend)
            partition_variance_arrays(X[:, :10], X[:, 10:12], Y, lengths, Xt[:, :10], Xt[:, 10:12], Yt,
                                      backend="numpy" if user == "torch" else "torch", n_iter=2)
            assert get_backend().name == user


def _gpu_or_skip(name):
    b = _try_backend(name)
    if b is None:
        pytest.skip(f"himalaya backend {name!r} does not work here (no GPU): GPU-equals-CPU not checked")
    return b


@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_gpu_backend_unavailable_gives_a_clear_error(name):
    # naming a GPU backend where it does not work fails with a clear error, not a pytest skip
    if _try_backend(name) is not None:
        pytest.skip(f"{name} works here; the error path is for machines without it")
    with pytest.raises(ValidationError, match="does not work"):
        fit_ridge_cv(np.ones((10, 2)), np.ones((10, 1)), [5, 5], n_folds=2, backend=name)


@pytest.mark.parametrize("method", ["primal", "kernel"])
@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_gpu_backend_equals_cpu(rng, name, method):
    # GPU is used when present, CPU otherwise, with the same results (float32 arithmetic)
    _gpu_or_skip(name)
    X, Y, Xt, Yt, lengths = _problem(rng, 600, 80, 300) if method == "primal" else _problem(rng, 300, 700, 300)
    cpu = fit_ridge_cv(X, Y, lengths, X_test=Xt, Y_test=Yt, backend="numpy", method=method, return_coef=True,
                       progress=False)
    gpu = fit_ridge_cv(X, Y, lengths, X_test=Xt, Y_test=Yt, backend=name, method=method, return_coef=True,
                       progress=False)
    assert gpu.info["backend"] == name and cpu.info["backend"] == "numpy"
    assert np.mean(gpu.best_alpha_index == cpu.best_alpha_index) >= 0.99  # float32 near-ties may differ
    same = gpu.best_alpha_index == cpu.best_alpha_index
    np.testing.assert_allclose(gpu.cv_scores, cpu.cv_scores, atol=1e-4)
    np.testing.assert_allclose(gpu.predictions[:, same], cpu.predictions[:, same], atol=1e-4)
    np.testing.assert_allclose(gpu.coef[:, same], cpu.coef[:, same], atol=1e-5)
    np.testing.assert_allclose(gpu.score[same], cpu.score[same], atol=1e-4)
