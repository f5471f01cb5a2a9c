"""The ridge core against himalaya's own estimators, on the same story splits."""

import numpy as np
import pytest

from brainalign import ValidationError
from brainalign.encoding import fit_ridge_cv, pearson_r, r2_score, story_folds

ALPHAS = np.logspace(0, 6, 13)


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
    from himalaya.backend import get_backend, set_backend

    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    previous = get_backend().name
    b = set_backend(backend)
    try:
        cls = RidgeCV if cls_name == "ridge" else KernelRidgeCV
        m = cls(alphas=ALPHAS, cv=folds, **kw).fit(X, Y)
        return (b.to_numpy(m.best_alphas_), b.to_numpy(m.cv_scores_), b.to_numpy(m.predict(Xt)),
                b.to_numpy(m.coef_) if cls_name == "ridge" else None)
    finally:
        set_backend(previous)


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
    both = fit_ridge_cv(X, [Y, Y2[:, :50]], lengths, X_test=Xt, Y_test=[Yt, Yt[:, ::-1][:, :50]],
                        backend="numpy", progress=False)
    one = fit_ridge_cv(X, Y2[:, :50], lengths, X_test=Xt, Y_test=Yt[:, ::-1][:, :50], backend="numpy",
                       progress=False)
    assert isinstance(both, list) and len(both) == 2
    assert both[1].predictions.shape == (Xt.shape[0], 50)
    np.testing.assert_array_equal(both[1].best_alpha_index, one.best_alpha_index)
    np.testing.assert_allclose(both[1].score, one.score, atol=1e-6)


def test_explicit_non_partition_cv(rng):
    # folds whose validation sets do not cover the data take the direct route
    X, Y, Xt, Yt, lengths = _problem(rng, 300, 40, 30)
    idx = np.arange(300)
    cv = [(idx[100:], idx[:50]), (idx[:200], idx[250:])]
    res = fit_ridge_cv(X, Y, cv=cv, X_test=Xt, backend="numpy", progress=False)
    alphas, _, pred, _ = _himalaya("ridge", X, Y, Xt, cv, "numpy")
    np.testing.assert_allclose(res.best_alphas, alphas, rtol=1e-5)
    np.testing.assert_allclose(res.predictions, pred, atol=1e-4)


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


def test_gpu_backends_unavailable_give_clear_error_or_work():
    # no GPU here: naming a GPU backend must fail with a clear error, not a pytest skip
    from brainalign.encoding._backend import _try_backend

    for name in ("torch_cuda", "cupy"):
        b = _try_backend(name)
        if b is None:
            with pytest.raises(ValidationError, match="does not work"):
                fit_ridge_cv(np.ones((10, 2)), np.ones((10, 1)), [5, 5], n_folds=2, backend=name)
