"""Statistics on known cases, variance partitioning, and the simulated dataset end to end."""

import numpy as np
import pytest
from scipy.stats import false_discovery_control

from brainalign import ValidationError
from brainalign.encoding import bootstrap_roi_ci, fdr, fit, partition_variance_arrays, permutation_test


def test_permutation_perfect_and_null(rng):
    n, t = 300, 400
    y = rng.standard_normal((n, t))
    p_perfect = permutation_test(y, y + 0.1 * rng.standard_normal((n, t)), n_permutations=500)
    assert np.all(p_perfect == pytest.approx(1 / 501))
    p_null = permutation_test(y, rng.standard_normal((n, t)), n_permutations=500)
    # independent white series: p-values uniform
    assert 0.02 < (p_null < 0.05).mean() < 0.09
    assert 0.4 < np.median(p_null) < 0.6


def _block_probes(nb, bl, n):
    """Targets that reveal the block order of every permutation: target (m, j) has a
    prediction that is 1 on the rows of block m and responses that are 1 on the rows of
    block j (0 elsewhere, rows past ``nb * bl`` too), so its null r is 1 exactly when the
    permutation puts block j against block m, and -1/(nb-1) otherwise."""
    blocks = np.minimum(np.arange(n) // bl, nb)  # rows past the last whole block: "block nb"
    onehot = (blocks[:, None] == np.arange(nb)[None, :]).astype(float)
    p = np.repeat(onehot, nb, axis=1)  # column m * nb + j: block m
    y = np.tile(onehot, (1, nb))  # column m * nb + j: block j
    return y, p


def test_permutation_null_matches_direct_computation(rng):
    # the block cross-product trick equals shuffling blocks and correlating directly; the
    # block orders are read off probe targets (the same orders serve every target), not
    # re-derived from the generator, so any way of drawing permutations passes, and
    # anything that is not a permutation of whole blocks fails
    n, t, bl, nb, P = 105, 3, 10, 10, 50  # a partial last block is left out of both statistics
    y, p = rng.standard_normal((n, t)), rng.standard_normal((n, t))
    py, pp = _block_probes(nb, bl, n)
    pv, null = permutation_test(np.hstack([y, py]), np.hstack([p, pp]), n_permutations=P, block_size=bl,
                                random_state=3, return_null=True)
    assert null.shape == (P, t + nb * nb)
    probe = null[:, t:].reshape(P, nb, nb)  # [k, m, j]: 1 where block j faces block m
    hit = np.isclose(probe, 1.0, atol=1e-5)
    assert np.allclose(probe[~hit], -1 / (nb - 1), atol=1e-5)
    # every draw is a permutation of the blocks (each block used exactly once) ...
    assert (hit.sum(2) == 1).all() and (hit.sum(1) == 1).all()
    orders = hit.argmax(2)  # orders[k, m] = the responses' block placed against prediction block m
    # ... the draws differ, and each block lands everywhere (not a fixed or cyclic shuffle)
    assert len({tuple(o) for o in orders}) == P
    assert (orders != np.arange(nb)).any(1).all()
    assert all(len(set(orders[:, m])) >= 5 for m in range(nb))
    for k in range(P):
        idx = (orders[k][:, None] * bl + np.arange(bl)).ravel()
        for j in range(t):
            r = np.corrcoef(p[:100, j], y[idx, j])[0, 1]
            assert null[k, j] == pytest.approx(r, abs=1e-5)
    obs = np.array([np.corrcoef(p[:100, j], y[:100, j])[0, 1] for j in range(t)])
    np.testing.assert_allclose(pv[:t], (1 + (null[:, :t] >= obs - 1e-12).sum(0)) / (P + 1))
    # the same seed gives the same orders; another seed others
    _, again = permutation_test(py, pp, n_permutations=P, block_size=bl, random_state=3, return_null=True)
    np.testing.assert_array_equal(again, null[:, t:])
    _, other = permutation_test(py, pp, n_permutations=P, block_size=bl, random_state=4, return_null=True)
    assert not np.array_equal(other, null[:, t:])
    # the old keyword still works, with a DeprecationWarning
    with pytest.warns(DeprecationWarning, match="block_length= is deprecated, use block_size="):
        old = permutation_test(y, p, n_permutations=P, block_length=bl, random_state=3)
    np.testing.assert_array_equal(old, pv[:t])


def test_permutation_bad_input(rng):
    with pytest.raises(ValidationError, match="30 test TRs make only 3 blocks of 10: a permutation test needs at least 10"):
        permutation_test(rng.standard_normal((30, 2)), rng.standard_normal((30, 2)))
    with pytest.raises(ValidationError, match="same 2-D shape"):
        permutation_test(rng.standard_normal((100, 2)), rng.standard_normal((100, 3)))


def test_fdr_is_benjamini_hochberg(rng):
    p = np.concatenate([rng.uniform(0, 1e-4, 50), rng.uniform(0, 1, 950), [np.nan]])
    sig, q = fdr(p, 0.05)
    np.testing.assert_allclose(q[:-1], false_discovery_control(p[:-1]))
    assert not sig[-1] and np.isnan(q[-1])
    assert sig[:50].all() and sig[50:-1].mean() < 0.02
    # by hand: the largest k with p_(k) <= k q / m
    ps = np.sort(p[:-1])
    k = np.max(np.flatnonzero(ps <= 0.05 * np.arange(1, 1001) / 1000)) + 1
    assert sig.sum() == k


def test_bootstrap_roi_ci(rng):
    scores = np.concatenate([rng.normal(0.3, 0.05, 200), rng.normal(0.0, 0.05, 300), [np.nan] * 5])
    labels = np.concatenate([np.ones(200, int), np.full(300, 2), np.ones(5, int)])
    out = bootstrap_roi_ci(scores, labels, names={1: "A", 2: "B"})
    assert out["A"]["n"] == 200
    assert out["A"]["low"] < out["A"]["mean"] < out["A"]["high"]
    assert out["A"]["low"] > 0.28 and out["A"]["high"] < 0.32
    assert out["B"]["low"] < 0 < out["B"]["high"]
    one = bootstrap_roi_ci(scores, np.arange(505) < 200)
    assert one["roi"]["mean"] == pytest.approx(out["A"]["mean"])


def test_variance_partition_separates_unique_parts(rng):
    n_st, L, nt = 8, 120, 60
    lengths = [L] * n_st
    n = n_st * L
    lm = rng.standard_normal((n + L, 20)).astype(np.float32)
    base = rng.standard_normal((n + L, 2)).astype(np.float32)
    W_lm = rng.standard_normal((20, nt)) / np.sqrt(20)
    W_b = rng.standard_normal((2, nt)) / np.sqrt(2)
    W_lm[:, 40:] = 0  # targets 40..59: baseline only
    W_b[:, :20] = 0  # targets 0..19: LM only; 20..39 both
    Y = lm @ W_lm + base @ W_b + rng.standard_normal((n + L, nt))
    out = partition_variance_arrays(lm[:n], base[:n], Y[:n], lengths, lm[n:], base[n:], Y[n:],
                                    backend="numpy", n_iter=10)
    assert set(out) >= {"r2_joint", "r2_lm", "r2_baseline", "unique_lm", "unique_baseline", "shared"}
    assert np.median(out["unique_lm"][:20]) > 0.3
    assert np.median(out["unique_baseline"][:20]) < 0.05
    assert np.median(out["unique_baseline"][40:]) > 0.3
    assert np.median(out["unique_lm"][40:]) < 0.05
    assert np.median(out["unique_lm"][20:40]) > 0.15 and np.median(out["unique_baseline"][20:40]) > 0.15
    np.testing.assert_allclose(out["unique_lm"] + out["shared"], out["r2_lm"], atol=1e-6)
    # the old name is the same function, with a DeprecationWarning
    from brainalign.encoding import variance_partition

    with pytest.warns(DeprecationWarning, match="partition_variance_arrays"):
        old = variance_partition(lm[:n], base[:n], Y[:n], lengths, lm[n:], base[n:], Y[n:], backend="numpy", n_iter=10)
    for k in out:
        np.testing.assert_array_equal(old[k], out[k])


def test_fit_on_simulated_dataset():
    from brainalign.datasets import simulate
    from brainalign.datasets.simulated import word_embedding_features
    from brainalign.features import WordFeatures

    src = word_embedding_features(16)
    ds = simulate(n_subjects=1, stories=7, space=400, features=src, snr=1.0, ar=0.6, n_repeats=4, seed=0)
    wf = WordFeatures("random16", None, [1], 1, lambda s, layer: src(ds.stories[s]), list(ds.stories))
    res = fit(wf, ds, stats=True, backend="numpy", progress=False, n_folds=3)
    gt = ds.ground_truth
    subj = ds.subjects[0]
    roi = gt.responsive[subj]
    r = res.sel(layer=1, subject=subj)
    sig = r.significant.values
    assert roi.any() and (~roi).any()
    assert sig[~roi].mean() <= 0.05
    assert sig[roi].mean() > 0.5
    # scores in the planted regions approach (and do not exceed) the true ceiling
    assert np.median(r.score.values[roi]) > 0.5 * np.median(gt.ceiling[subj][roi])
    assert np.median(r.score.values[roi]) < np.median(gt.ceiling[subj][roi]) + 0.05
    np.testing.assert_allclose(np.nanmedian(res.ceiling.values[0][roi]), np.median(gt.ceiling[subj][roi]), atol=0.1)
