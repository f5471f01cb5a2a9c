"""Block bootstrap of held-out ROI scores (over test-story TR blocks).

The held-out score of a target is the Pearson r between its test responses ``y`` and
the model's predictions ``p``. Neighbouring TRs are correlated, so the test TRs are cut
into non-overlapping blocks (``block_length`` TRs, within stories: no block spans two
stories; a story's last block takes the remainder when it is at least half a block,
otherwise it joins the block before it) and whole blocks are resampled with replacement.

``block_length`` is the *bootstrap's* block (``boot_block_length`` of
:func:`brainalign.encoding.fit`, ``BOOTSTRAP["block_length"]`` of a sweep, which stores
it in the ``bootstrap`` attribute). It is not the permutation test's ``block_size``
(:func:`brainalign.encoding.stats.permutation_test`, config ``stats.block_size``): those
blocks are shuffled without replacement, across the whole held-out series, to make a
null for p-values. Two tests, two parameters, kept apart on purpose: do not merge them
or rename one into the other (``permutation_test`` still reads its own old name
``block_length`` as ``block_size``, with a DeprecationWarning; that is a keyword of the
permutation test only).

Each block's six sums (rows, ``y``, ``p``, ``y^2``, ``p^2``, ``yp``) per target are all a
replicate needs: replicate ``b`` draws blocks with counts ``C[b]`` and its r comes from
``C @ sums``, a GEMM of ``n_boot x n_blocks`` by ``n_blocks x targets``. Targets are done
in chunks, so ``targets x n_boot`` is never held at once for a whole cortex, and
``targets x n_boot x blocks`` never. The ROI score of a replicate is the mean of its
targets' replicate r (non-finite values left out, as :func:`brainalign.rois.roi_values`
does).

The draws depend only on ``(n_blocks, n_boot, seed)`` (:func:`block_draws`): replicate
``b`` uses the same blocks at every checkpoint and layer, and for every subject who heard
the same test stories, so differences between checkpoints (or layers) can be taken
replicate by replicate (a paired bootstrap).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..errors import ValidationError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BLOCK_LENGTH",
    "DEFAULT_N_BOOT",
    "MIN_BLOCKS",
    "tr_blocks",
    "block_draws",
    "subject_draws",
    "block_sums",
    "replicate_r",
    "roi_bootstrap",
    "roi_mean",
    "roi_labels_for",
]

#: TRs per bootstrap block (40 s at a TR of 2 s: longer than the autocorrelation of BOLD
#: noise and of the haemodynamic response of the predictions). Not the permutation test's
#: ``block_size`` (:func:`brainalign.encoding.stats.permutation_test`).
DEFAULT_BLOCK_LENGTH = 20
#: Bootstrap replicates.
DEFAULT_N_BOOT = 200
#: Fewer blocks than this make percentile intervals too narrow; a warning says so.
MIN_BLOCKS = 10


def tr_blocks(story_lengths: Sequence[int], block_length: int = DEFAULT_BLOCK_LENGTH) -> np.ndarray:
    """Block index of every row of the stacked test stories (int64, ``sum(lengths)``).

    Blocks are ``block_length`` rows within a story; a story's remainder forms its own
    block when it is at least half a block long and joins the last block otherwise (a
    story shorter than half a block is one block). These are the bootstrap's blocks, not
    the permutation test's ``block_size`` (:func:`brainalign.encoding.stats.permutation_test`;
    see this module's docstring).
    """
    if int(block_length) < 1:
        raise ValidationError(f"block_length must be a positive number of TRs, got {block_length!r}")
    L = int(block_length)
    out, start = [], 0
    for n in story_lengths:
        n = int(n)
        if n <= 0:
            continue
        nb = max(1, int(np.floor(n / L + 0.5)))
        out.append(start + np.minimum(np.arange(n) // L, nb - 1))
        start += nb
    if not out:
        raise ValidationError("no test TRs to cut into blocks")
    return np.concatenate(out).astype(np.int64)


def block_draws(n_blocks: int, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> np.ndarray:
    """How many times each block is drawn in each replicate (``n_boot x n_blocks``, float64).

    Replicate ``b`` draws ``n_blocks`` blocks with replacement. The draws depend only on
    ``(n_blocks, n_boot, seed)``, so they are the same at every checkpoint and layer.
    """
    n_blocks, n_boot = int(n_blocks), int(n_boot)
    if n_blocks < 1 or n_boot < 1:
        raise ValidationError(f"need at least one block and one replicate, got {n_blocks} and {n_boot}")
    return _draw_counts(n_blocks, n_boot, seed, stream=0)


def subject_draws(n_subjects: int, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> np.ndarray:
    """How many times each subject is drawn in each replicate (``n_boot x n_subjects``);
    depends only on ``(n_subjects, n_boot, seed)`` (a stream apart from the blocks')."""
    return _draw_counts(int(n_subjects), int(n_boot), seed, stream=1)


def _draw_counts(n: int, n_boot: int, seed: int, stream: int) -> np.ndarray:
    """``n_boot`` replicates of ``n`` draws with replacement from ``n`` items, as counts
    (``n_boot x n``, float64); the random stream is ``(seed, n, n_boot, stream)``."""
    rng = np.random.default_rng([int(seed), n, n_boot, stream])
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0)
    return counts


def block_sums(y: np.ndarray, p: np.ndarray, blocks: np.ndarray, n_blocks: int | None = None) -> np.ndarray:
    """Per-block sums ``[rows, y, p, y^2, p^2, y p]`` of every target (``6 x n_blocks x targets``, float64)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2:
        raise ValidationError(f"responses and predictions must be 2-D and of one shape, got {y.shape} and {p.shape}")
    blocks = np.asarray(blocks)
    if blocks.shape != (y.shape[0],):
        raise ValidationError(f"blocks must give one block per row ({y.shape[0]}), got shape {blocks.shape}")
    nb = int(blocks.max()) + 1 if n_blocks is None else int(n_blocks)
    import scipy.sparse as sp

    M = sp.csr_matrix((np.ones(len(blocks)), (blocks, np.arange(len(blocks)))), shape=(nb, len(blocks)))
    out = np.empty((6, nb, y.shape[1]))
    out[0] = np.asarray(M.sum(1))  # the same for every target
    out[1] = M @ y
    out[2] = M @ p
    out[3] = M @ (y * y)
    out[4] = M @ (p * p)
    out[5] = M @ (y * p)
    return out


def replicate_r(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Pearson r of every replicate and target (``n_boot x targets``) from
    :func:`block_sums` and :func:`block_draws`; NaN where a replicate's ``y`` or ``p`` is
    constant. A row of ones in ``counts`` gives the full-sample r."""
    n = counts @ sums[0][:, :1]  # rows per replicate: one column serves every target
    sy, sp_, syy, spp, syp = (counts @ sums[k] for k in range(1, 6))
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = syp - sy * sp_ / n
        vy = syy - sy * sy / n
        vp = spp - sp_ * sp_ / n
        ok = (vy > 1e-12 * syy) & (vp > 1e-12 * spp)
        r = cov / np.sqrt(np.where(ok, vy * vp, 1.0))
    return np.where(ok, r, np.nan)


def _onehot(labels: np.ndarray, codes: Sequence[int]):
    import scipy.sparse as sp

    col = {int(c): j for j, c in enumerate(codes)}
    rows = np.flatnonzero(np.isin(labels, list(col)))
    return sp.csr_matrix((np.ones(len(rows)), (rows, [col[int(c)] for c in labels[rows]])),
                         shape=(len(labels), len(codes)))


def roi_mean(values: np.ndarray, labels: np.ndarray, codes: Sequence[int]) -> np.ndarray:
    """Mean over each ROI's targets of the last axis of ``values`` (non-finite values left
    out; NaN for an ROI without a finite value): ``(..., len(codes))``, float64."""
    v = np.asarray(values, dtype=np.float64)
    lead = v.shape[:-1]
    flat = v.reshape(-1, v.shape[-1])
    ok = np.isfinite(flat)
    onehot = _onehot(np.asarray(labels), codes)
    total = np.asarray((onehot.T @ np.where(ok, flat, 0.0).T).T)
    count = np.asarray((onehot.T @ ok.T.astype(np.float64)).T)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out.reshape(*lead, len(codes))


def roi_bootstrap(
    y: np.ndarray,
    p: np.ndarray,
    story_lengths: Sequence[int],
    labels: np.ndarray,
    codes: Sequence[int],
    *,
    n_boot: int = DEFAULT_N_BOOT,
    block_length: int = DEFAULT_BLOCK_LENGTH,
    seed: int = 0,
    chunk: int = 256,
) -> np.ndarray:
    """ROI-mean held-out r of every bootstrap replicate (``n_boot x len(codes)``, float64).

    Parameters
    ----------
    y, p : array (n_test, n_targets)
        Test responses and predictions, test stories stacked in order.
    story_lengths : rows of each test story (blocks never span two).
    labels : int array (n_targets,)
        ROI label of each target (0: none).
    codes : the labels to report, one column each.
    n_boot, block_length, seed : see :func:`block_draws` and :func:`tr_blocks`.
    chunk : targets per step (memory: about ``10 x n_boot x chunk`` floats; 256 keeps a step in a
        CPU cache, several times faster than large steps).
    """
    y = np.asarray(y)
    p = np.asarray(p)
    labels = np.asarray(labels)
    if labels.shape != (y.shape[1],):
        raise ValidationError(f"labels must give one ROI per target ({y.shape[1]}), got shape {labels.shape}")
    if sum(int(n) for n in story_lengths) != y.shape[0]:
        raise ValidationError(f"test story lengths add up to {sum(story_lengths)} rows, the responses have {y.shape[0]}")
    blocks = tr_blocks(story_lengths, block_length)
    nb = int(blocks[-1]) + 1
    counts = block_draws(nb, n_boot, seed)
    keep = np.flatnonzero(np.isin(labels, list(codes)))
    col = {int(c): j for j, c in enumerate(codes)}
    roi_of = np.array([col[int(c)] for c in labels[keep]], dtype=np.int64)
    total = np.zeros((int(n_boot), len(codes)))
    finite = np.zeros_like(total)
    step = max(1, int(chunk))
    for s in range(0, keep.size, step):
        cols = keep[s : s + step]
        r = replicate_r(block_sums(y[:, cols], p[:, cols], blocks, nb), counts)
        ok = np.isfinite(r)
        onehot = np.zeros((cols.size, len(codes)))
        onehot[np.arange(cols.size), roi_of[s : s + step]] = 1.0
        total += np.where(ok, r, 0.0) @ onehot
        finite += ok @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite > 0, total / np.maximum(finite, 1), np.nan)


def roi_labels_for(rois, space) -> tuple[np.ndarray, list[int], list[str]]:
    """(label per target of ``space``, codes, names) for ``rois``: an atlas name, an
    :class:`~brainalign.surfaces.atlases.Atlas` (fsaverage atlases are carried to the
    space's level) or an int label array (0 = no ROI) with one label per target."""
    from ..surfaces.atlases import Atlas, load_atlas
    from ..stimulus import FSAVERAGE_SIZES

    n = space.n_targets
    if isinstance(rois, str):
        atlas = load_atlas(rois, space)
    elif isinstance(rois, Atlas):
        atlas = rois
        if atlas.n_targets != n and atlas.space in FSAVERAGE_SIZES and space.name in FSAVERAGE_SIZES:
            atlas = atlas.resample(space.name)
    else:
        arr = np.asarray(rois)
        if arr.ndim != 1:
            raise ValidationError(f"rois: a label array must be 1-D (one label per target), got shape {arr.shape}")
        atlas = Atlas("labels", space.name, arr, {})
    if atlas.n_targets != n:
        raise ValidationError(
            f"rois: atlas {atlas.name!r} ({atlas.space}) has {atlas.n_targets} targets, space {space.name!r} has {n}"
        )
    codes = list(atlas.names)
    return np.asarray(atlas.labels), codes, [atlas.names[c] for c in codes]
