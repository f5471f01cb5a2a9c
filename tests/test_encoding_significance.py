"""The default significance test: its level on autocorrelated nulls, its tail against
Monte Carlo, its power, and FDR over a whole cortex (issue 13)."""

import numpy as np
import pytest
from scipy import signal

from brainalign import ValidationError
from brainalign.encoding import fdr, permutation_test, sign_randomisation_test, significance
from brainalign.encoding.significance import _saddlepoint_sf, null_weights


def ar1(rng, n, t, phi):
    e = rng.standard_normal((n + 400, t))
    return signal.lfilter([1.0], [1.0, -phi], e, axis=0)[400:]


def per_story_z(a, lengths):
    out, s = [], 0
    for m in lengths:
        x = a[s:s + m]
        out.append((x - x.mean(0)) / x.std(0))
        s += m
    return np.concatenate(out)


@pytest.mark.parametrize("phi", [0.9, 0.97])
def test_level_holds_on_autocorrelated_null_data(phi):
    """Responses unrelated to the predictions, as autocorrelated as story BOLD, stories
    z-scored as the pipeline does: p < 0.05 and p < 0.01 at their nominal rates, where
    10-TR block permutations are anti-conservative."""
    rng = np.random.default_rng(int(phi * 100))
    lengths = [291, 250, 400]
    n, t = sum(lengths), 20000
    y = per_story_z(ar1(rng, n, t, phi), lengths)
    p = per_story_z(ar1(rng, n, t, 0.9), lengths)
    pv = sign_randomisation_test(y, p, lengths)
    assert np.isfinite(pv).all()
    assert np.mean(pv < 0.05) <= 0.055 and np.mean(pv < 0.01) <= 0.012
    assert np.mean(pv < 0.05) >= 0.04  # and not far too conservative either
    # per story, too (each held out on its own)
    start = 0
    for m in lengths:
        one = sign_randomisation_test(y[start:start + m], p[start:start + m])
        assert np.mean(one < 0.05) <= 0.058, m
        start += m
    old = permutation_test(y[:291, :4000], p[:291, :4000], n_permutations=500, block_size=10)
    assert np.mean(old < 0.05) > np.mean(pv < 0.05) + 0.005  # what it replaces


@pytest.mark.parametrize("phi,n,rel", [(0.9, 300, 0.06), (0.97, 200, 0.25)])
def test_saddlepoint_tail_matches_monte_carlo(phi, n, rel):
    """Against 400,000 random sign draws: within a few per cent for a story of 300 TRs,
    within 25% when a strongly autocorrelated short story leaves few dominant terms."""
    rng = np.random.default_rng(4)
    y = ar1(rng, n, 8, phi)
    p = 0.3 * np.linspace(0.3, 1.6, 8) * y + ar1(rng, n, 8, 0.9)
    r, offset, c, valid = null_weights(y, p)
    analytic = sign_randomisation_test(y, p)
    signs = rng.integers(0, 2, (400_000, c.shape[0])) * 2.0 - 1.0
    for j in range(8):
        mc = np.mean(signs @ np.abs(c[:, j]) >= r[j] - offset[j])
        se = np.sqrt(mc * (1 - mc) / signs.shape[0])  # Monte Carlo error of the reference
        assert abs(analytic[j] - mc) <= 4 * se + rel * mc, (j, analytic[j], mc)
    # the observed statistic is the all-positive-signs sum of the signed weights
    np.testing.assert_allclose(r - offset, c.sum(0), atol=1e-12)


def test_far_tail_has_no_floor_and_a_planted_signal_is_found():
    rng = np.random.default_rng(0)
    n, t = 300, 2000
    signal_ = ar1(rng, n, t, 0.8)
    noise = ar1(rng, n, t, 0.9)
    planted = np.zeros(t, bool)
    planted[:200] = True
    y = np.where(planted, signal_ + noise, noise)
    pred = signal_ + 0.5 * ar1(rng, n, t, 0.8)
    pv = sign_randomisation_test(y, pred)
    assert np.median(pv[planted]) < 1e-6  # far below what 1,000 permutations can say (1e-3)
    assert fdr(pv, 0.05)[0][planted].mean() >= 0.95
    assert np.mean(pv[~planted] < 0.05) < 0.07  # the rest is noise
    # the block permutation test's floor: 1 / (n_permutations + 1)
    floor = permutation_test(y[:, :50], pred[:, :50], n_permutations=999, block_size=10).min()
    assert floor == pytest.approx(1e-3)


def test_fdr_fires_on_a_cortex_with_few_planted_targets():
    """335 planted vertices among 20,484 with held-out r about 0.65: BH over the whole
    cortex finds them (block permutations with 1,000 orders find none)."""
    rng = np.random.default_rng(1)
    n, t = 300, 20484
    planted = np.zeros(t, bool)
    planted[rng.choice(t, 335, replace=False)] = True
    s = ar1(rng, n, t, 0.85)
    s /= s.std(0)
    y = ar1(rng, n, t, 0.9)
    y /= y.std(0)
    y[:, planted] = 0.86 * s[:, planted] + 0.51 * y[:, planted]  # r about 0.65 with the prediction
    pv = sign_randomisation_test(y, s)
    sig = fdr(pv, 0.05)[0]
    assert sig[planted].mean() >= 0.95
    assert (sig & ~planted).sum() / sig.sum() <= 0.05


def test_stories_are_randomised_apart_and_constant_targets_are_nan():
    rng = np.random.default_rng(2)
    y = rng.standard_normal((120, 4))
    p = rng.standard_normal((120, 4))
    p[:, 3] = 1.0
    a = sign_randomisation_test(y, p, [60, 60])
    b = sign_randomisation_test(y, p)
    assert np.isnan(a[3]) and np.isnan(b[3])
    assert not np.allclose(a[:3], b[:3])  # one story or two is a different null
    with pytest.raises(ValidationError, match=r"lengths \[60, 50\] must be positive and sum to the 120"):
        sign_randomisation_test(y, p, [60, 50])
    with pytest.raises(ValidationError, match="same 2-D shape"):
        sign_randomisation_test(y, p[:, :2])


def test_block_test_refuses_too_few_blocks_and_unknown_tests():
    rng = np.random.default_rng(0)
    y, p = rng.standard_normal((74, 3)), rng.standard_normal((74, 3))
    with pytest.raises(ValidationError, match="74 test TRs make only 3 blocks of 20: a permutation test needs at least 10"):
        significance(y, p, test="block", block_size=20)
    with pytest.raises(ValidationError, match="test must be one of sign, block"):
        significance(y, p, test="bootstrap")
    assert np.allclose(significance(y, p, [74]), sign_randomisation_test(y, p))


def test_saddlepoint_on_a_lattice_of_equal_terms():
    # S = c (e_1 + ... + e_4) takes 5 values: P(S >= 4c) = 1/16 exactly (nothing is
    # larger); at the atom 2c a continuous tail falls between P(S > 2c) = 1/16 and
    # P(S >= 2c) = 5/16
    c = np.full((4, 2), 0.1)
    p = _saddlepoint_sf(np.array([0.4, 0.2]), c)
    assert p[0] == pytest.approx(1 / 16)
    assert 1 / 16 < p[1] < 5 / 16


# -- the ROI-level test (signs shared by an ROI's targets) ---------------------------------
def _spatially_correlated(rng, n, rois, size, phi, shared=0.8):
    """AR(1) noise of ``rois`` ROIs of ``size`` targets each, whose targets share a common
    series (correlation ``shared`` between targets of one ROI, as on a smooth cortex)."""
    common = np.repeat(ar1(rng, n, rois, phi), size, axis=1)
    own = ar1(rng, n, rois * size, phi)
    return np.sqrt(shared) * common + np.sqrt(1 - shared) * own


def test_roi_terms_sum_to_the_roi_mean_r():
    from brainalign.encoding.significance import roi_null_terms
    from brainalign.encoding.ridge import pearson_r

    rng = np.random.default_rng(7)
    lengths = [120, 90]
    y = per_story_z(ar1(rng, 210, 30, 0.9), lengths)
    p = 0.3 * y + ar1(rng, 210, 30, 0.9)
    y[:, 5] = 1.0  # a constant target is left out of its ROI's mean, as ROI means of r do
    labels = np.repeat([1, 2, 3], 10)
    labels[-3:] = 0
    terms = roi_null_terms(y, p, lengths, labels, [1, 2, 3, 9])
    assert terms.shape == (210 - 2, 4)
    assert np.isnan(terms[:, 3]).all()  # an ROI with no target
    r, offset, _, valid = null_weights(y, p, lengths)
    for j, code in enumerate([1, 2, 3]):
        m = (labels == code) & valid
        np.testing.assert_allclose(terms[:, j].sum(), (r[m] - offset[m]).mean(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(r[m].mean(), np.nanmean(pearson_r(y, p)[m]), rtol=1e-6)


@pytest.mark.parametrize("phi", [0.9, 0.97])
def test_roi_test_holds_its_level_with_spatially_correlated_noise(phi):
    """Null ROIs whose targets share 80% of their noise: treating targets as independent
    (averaging their p-values' z, or a test of the mean with independent signs per
    target) would be far off; shared signs keep the level, for one subject and for the
    mean of three."""
    from brainalign.encoding.significance import roi_null_terms, sign_pvalues

    rng = np.random.default_rng(int(phi * 1000))
    lengths, rois, size = [150, 140], 1500, 12
    n = sum(lengths)
    labels = np.repeat(np.arange(1, rois + 1), size)
    subj = []
    for _ in range(3):
        y = per_story_z(_spatially_correlated(rng, n, rois, size, phi), lengths)
        p = per_story_z(_spatially_correlated(rng, n, rois, size, 0.9), lengths)
        subj.append(roi_null_terms(y, p, lengths, labels, range(1, rois + 1)))
    one = sign_pvalues(subj[0])
    mean3 = sign_pvalues(np.concatenate(subj, axis=0))
    for pv in (one, mean3):
        assert 0.035 <= np.mean(pv < 0.05) <= 0.065
        assert np.mean(pv < 0.01) <= 0.018
    # independent signs per target would make the ROI mean's null far too narrow
    y = per_story_z(_spatially_correlated(rng, n, rois, size, phi), lengths)
    p = per_story_z(_spatially_correlated(rng, n, rois, size, 0.9), lengths)
    _, _, c, _ = null_weights(y, p, lengths)
    naive = sign_pvalues(c.reshape(n - 2, rois, size).transpose(0, 2, 1).reshape(-1, rois))
    assert np.mean(naive < 0.05) > 0.15


def test_roi_test_finds_a_planted_roi_on_one_short_story():
    """30 planted ROIs (r about 0.4 per target, 80% of the noise shared within the ROI)
    beside 30 null ROIs, one 74-TR test story as in the demo: most planted ROIs found,
    null ROIs at their level."""
    from brainalign.encoding.significance import roi_null_terms, sign_pvalues

    rng = np.random.default_rng(3)
    n, k, size = 74, 30, 40
    sig = np.repeat(ar1(rng, n, 2 * k, 0.8), size, axis=1)
    gain = np.repeat(np.r_[np.ones(k), np.zeros(k)], size)
    y = per_story_z(_spatially_correlated(rng, n, 2 * k, size, 0.9) + gain * sig, [n])
    p = per_story_z(sig + 0.5 * ar1(rng, n, 2 * k * size, 0.9), [n])
    pv = sign_pvalues(roi_null_terms(y, p, [n], np.repeat(np.arange(2 * k), size), range(2 * k)))
    assert np.mean(pv[:k] < 0.05) >= 0.8 and np.median(pv[:k]) < 1e-3
    assert np.mean(pv[k:] < 0.05) <= 0.15
