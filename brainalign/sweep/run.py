"""Run a sweep: checkpoints x layers x subjects, resumable, in-process or on Dask.

The plan has one task per checkpoint: features for all layers (cached), encoders for
all layers x subjects (subjects sharing stories share one design), ROI summaries. Each
task writes its own region of the results store and then marks itself done, so a rerun
after a crash redoes only what is missing.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .._version import __version__
from ..encoding.bootstrap import DEFAULT_BLOCK_LENGTH, DEFAULT_N_BOOT
from ..encoding.stats import MIN_PERMUTATION_BLOCKS
from ..errors import ValidationError
from ..stimulus import FSAVERAGE_SIZES, Space
from .config import RunConfig, UnusedSettingWarning, config_hash, load_config, settings_diff
from . import executors as _executors
from .store import IncompatibleStoreError, ResultsStore

log = logging.getLogger(__name__)

__all__ = ["Checkpoint", "Plan", "make_plan", "load_dataset", "run", "run_checkpoint", "Sweep"]

#: The block bootstrap of ROI scores every sweep stores (``roi_boot``): replicates, TRs
#: per block, seed. Replicate ``b`` uses the same test-story blocks at every checkpoint.
#: ``block_length`` is the bootstrap's block (:func:`brainalign.encoding.bootstrap.tr_blocks`),
#: not the permutation test's ``stats.block_size`` (:func:`brainalign.encoding.stats.permutation_test`):
#: two tests, two parameters, kept apart on purpose.
BOOTSTRAP = {"n_boot": DEFAULT_N_BOOT, "block_length": DEFAULT_BLOCK_LENGTH, "seed": 0}


@dataclass(frozen=True)
class Checkpoint:
    """One model checkpoint: a label in the store, and how to load it."""

    label: str
    model: str  # hub id or local folder passed to from_pretrained
    revision: str | None  # hub revision (None for local folders)
    step: float = np.nan
    tokens: float = np.nan


@dataclass
class Plan:
    """Everything fixed before any work starts (validated up front)."""

    config: RunConfig
    checkpoints: list[Checkpoint]
    layers: list[int]
    n_layers: int
    subjects: list[str]
    n_targets: int
    space: str
    hemi: np.ndarray
    rois: list[str]
    settings_hash: str
    #: fsaverage level the subjects' voxel maps are projected to before storage (LeBel
    #: 2023 with surfaces; ``rois.space``), or None when the data are stored as they are
    projection: str | None = None
    #: the dataset the plan was made on (not pickled: a Dask worker loads it again, once per process)
    loaded: Any = field(default=None, repr=False, compare=False)

    def dataset(self):
        """The configured dataset: the one :func:`make_plan` was given or loaded, or, in a
        process the plan was sent to, :func:`load_dataset` of the config."""
        if self.loaded is None:
            self.loaded = load_dataset(self.config)
        return self.loaded

    def __getstate__(self) -> dict:
        return {**self.__dict__, "loaded": None}

    @property
    def store_path(self) -> Path:
        return Path(self.config.output.store).expanduser()

    def layout_key(self) -> dict:
        # the stored variables and their dims are part of the layout: a store made by a
        # version with other variables is refused before any work, not failed mid-run
        return {
            "hash": self.settings_hash,
            "layers": self.layers,
            "subjects": self.subjects,
            "n_targets": self.n_targets,
            "rois": self.rois,
            "bootstrap": dict(BOOTSTRAP),
            "variables": {name: list(dims) for name, (dims, _) in sorted(_variables(self).items())},
        }


# -- dataset and model resolution -----------------------------------------------------
_DATASETS: dict[str, Any] = {}  # a cache: config's dataset section -> Dataset


def load_dataset(cfg: RunConfig):
    """The configured dataset, loaded once per process (metadata only; responses are lazy).

    A cache, nothing more: :func:`make_plan` keeps the dataset on the plan, and every
    stage reads it there (:meth:`Plan.dataset`).
    """
    from .. import datasets

    key = json.dumps(cfg.dataset.model_dump(mode="json"), sort_keys=True)
    if key not in _DATASETS:
        d = cfg.dataset
        kwargs = dict(d.options)
        if d.root is not None:
            kwargs["root"] = str(Path(d.root).expanduser())
        try:
            _DATASETS[key] = datasets.load(d.name, subjects=d.subjects, **kwargs)
        except KeyError as exc:  # an unknown subject
            raise ValidationError(f"dataset.subjects: {exc.args[0]}") from None
    return _DATASETS[key]


_dataset = load_dataset  # its old name


def _training_axis(label: str, user: dict | None) -> tuple[float, float]:
    if user and label in user:
        v = user[label]
        if isinstance(v, dict):
            return float(v.get("step", np.nan)), float(v.get("tokens", np.nan))
        return np.nan, float(v)
    from ..features import parse_revision

    axis = parse_revision(label)
    step, tokens = axis.get("step"), axis.get("tokens")
    return (np.nan if step is None else float(step)), (np.nan if tokens is None else float(tokens))


def _trainer_state(folder: Path) -> tuple[float, float] | None:
    """(step, tokens) from a checkpoint's ``trainer_state.json`` (as HF Trainer writes it)."""
    p = folder / "trainer_state.json"
    if not p.is_file():
        return None
    state = json.loads(p.read_text())
    step = state.get("global_step")
    tokens = state.get("num_input_tokens_seen")
    return (np.nan if step is None else float(step)), (np.nan if tokens is None else float(tokens))


def _source_cache(cfg: RunConfig) -> str | None:
    """The hub cache a plan reads revisions' configs from: ``weights.mirror`` when set
    (the weights are copied from there), else the default (the hub, or its cache)."""
    return str(Path(cfg.weights.mirror).expanduser()) if cfg.weights.mirror else None


def _has_config(model: str, revision: str, trust_remote_code: bool, cache_dir: str | None = None) -> bool:
    """True when ``revision`` of hub model ``model`` can be read (e.g. a commit hash that
    the revision listing, which names branches and tags, does not show)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    except (OSError, ValueError):
        return False
    return True


def _local_checkpoints(folder: Path) -> list[str]:
    """Sub-folders of ``folder`` that hold a model (a config.json)."""
    return [p.name for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file()]


def resolve_checkpoints(cfg: RunConfig) -> list[Checkpoint]:
    """Turn ``model.revisions`` into concrete checkpoints, checking each exists."""
    from .config import EveryN, LogSpaced

    m = cfg.model
    name = os.path.expanduser(m.name)
    local = Path(name).is_dir()
    if local and not (Path(name) / "config.json").is_file():
        available = _local_checkpoints(Path(name))
        where = f"folder {name}"
    elif local:
        available = [None]
        where = f"folder {name}"
    else:
        from ..features import list_revisions

        available = list(list_revisions(m.name, hf_cache_dir=_source_cache(cfg)))
        where = f"model {m.name}"

    def axis(label):
        if local and label is not None and not (m.training_axis and label in m.training_axis):
            state = _trainer_state(Path(name) / label)
            if state is not None:
                return state
        return _training_axis(label, m.training_axis)

    if available and available != [None]:
        available = sorted(available, key=lambda r: (np.nan_to_num(axis(r)[0], nan=np.inf), r))

    revs = m.revisions
    if revs is None:
        chosen = available
    elif isinstance(revs, list):
        missing = [r for r in revs if r not in available and (local or not _has_config(m.name, r, m.trust_remote_code, _source_cache(cfg)))]
        if missing:
            shown = ", ".join(map(str, available[:8])) + (" ..." if len(available) > 8 else "")
            raise ValidationError(f"model.revisions: {missing} not found in {where} (available: {shown or 'none'})")
        wanted = set(revs)
        chosen = [r for r in available if r in wanted]  # in training order
        chosen += [r for r in revs if r not in available]  # e.g. commit hashes, not listed as refs
    elif isinstance(revs, EveryN):
        chosen = available[:: revs.every]
    elif isinstance(revs, LogSpaced):
        steps = np.array([axis(r)[0] for r in available], dtype=float)
        if np.isnan(steps).any():
            raise ValidationError(f"model.revisions: log_spaced needs step numbers, but some of {where}'s revisions have none")
        pos = np.log10(steps + 1)
        targets = np.linspace(pos.min(), pos.max(), revs.log_spaced)
        idx = sorted({int(np.argmin(np.abs(pos - t))) for t in targets})
        chosen = [available[i] for i in idx]
    else:  # pragma: no cover
        raise ValidationError(f"model.revisions: unsupported value {revs!r}")
    if not chosen:
        raise ValidationError(f"model.revisions: no checkpoint found in {where}")
    out = []
    for r in chosen:
        if r is None:
            out.append(Checkpoint(label=Path(name).name, model=name, revision=None))
        elif local:
            out.append(Checkpoint(r, str(Path(name) / r), None, *axis(r)))
        else:
            out.append(Checkpoint(r, m.name, r, *axis(r)))
    return out


def _n_layers(ckpt: Checkpoint, trust_remote_code: bool, cache_dir: str | None = None) -> int:
    from transformers import AutoConfig

    conf = AutoConfig.from_pretrained(ckpt.model, revision=ckpt.revision, trust_remote_code=trust_remote_code,
                                      cache_dir=cache_dir if ckpt.revision is not None else None)
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(conf, attr, None):
            return int(getattr(conf, attr))
    raise ValidationError(f"model {ckpt.model}: cannot tell its number of layers from its config")


def _atlas_space(name: str) -> bool:
    """True for spaces brainalign has atlases for (fsaverage surfaces)."""
    from ..stimulus import FSAVERAGE_SIZES

    return name in FSAVERAGE_SIZES


def make_plan(config: RunConfig | str | Path | dict, dataset=None) -> Plan:
    """Validate everything that can be validated before work starts.

    ``dataset``: the configured dataset, already loaded (default: :func:`load_dataset`).

    Raises a :class:`ValidationError` naming the problem for an unknown config key, a
    revision that does not exist, a subject not in the dataset, layers out of range.

    The stages run in this order (each raises before the next starts): the config and
    its model name, the dataset's subjects, the options that need each other, the space
    the maps are stored in, the checkpoints and layers, the ROIs. A new check or a new
    part of the plan is one more stage here.
    """
    cfg = _checked_config(config)
    ds = load_dataset(cfg) if dataset is None else dataset
    subjects = _checked_subjects(cfg, ds)
    _check_options(cfg)
    targets = _target_space(cfg, ds, subjects)
    checkpoints = resolve_checkpoints(cfg)
    n_layers = _n_layers(checkpoints[-1], cfg.model.trust_remote_code, _source_cache(cfg))
    _check_states(cfg, ds, checkpoints)
    layers = cfg.resolve_layers(n_layers)
    roi_names = _roi_names(cfg, subjects, targets)
    plan = Plan(
        config=cfg,
        checkpoints=checkpoints,
        layers=layers,
        n_layers=n_layers,
        subjects=subjects,
        n_targets=targets.n_targets,
        space=targets.space,
        hemi=targets.hemi,
        rois=roi_names,
        settings_hash=config_hash(cfg),
        projection=targets.projection,
        loaded=ds,
    )
    _variables(plan)  # an internal state's variable named like a stored one is refused here
    return plan


def _state_context(cfg: RunConfig, ds, ckpt: Checkpoint):
    """What :mod:`brainalign.dynamics.states` metrics read of one checkpoint."""
    from ..dynamics.states import CheckpointContext

    return CheckpointContext(model=ckpt.model, revision=ckpt.revision, trust_remote_code=cfg.model.trust_remote_code,
                             texts=[" ".join(st.words) for st in ds.stories.values()],
                             settings={"llc": cfg.llc.model_dump()}, device=cfg.features.device,
                             hf_cache_dir=_source_cache(cfg))


def _check_states(cfg: RunConfig, ds, checkpoints: list[Checkpoint]) -> None:
    """The ``internal_states`` can be computed (the extra installed, a causal LM for the
    LLC, training logs for memorisation), checked on the last checkpoint first."""
    if not cfg.internal_states:
        return
    from ..dynamics.states import check_states

    ctxs = [_state_context(cfg, ds, c) for c in [checkpoints[-1], *checkpoints[:-1]]]
    try:
        check_states(cfg.internal_states, ctxs)
    except ValidationError as exc:
        raise ValidationError(f"{cfg.source + ': ' if cfg.source else ''}{exc}") from None


def _checked_config(config: RunConfig | str | Path | dict) -> RunConfig:
    """The run config (read and validated), its model name checked."""
    from ..features.loading import check_model_name

    cfg = config if isinstance(config, RunConfig) else load_config(config)
    try:
        check_model_name(cfg.model.name)
    except ValidationError as exc:
        raise ValidationError(f"{cfg.source + ': ' if cfg.source else ''}model.name: {exc}") from None
    return cfg


def _checked_subjects(cfg: RunConfig, ds) -> list[str]:
    """The configured subjects (default: all of the dataset's), each checked by :func:`_check_subject`."""
    subjects = cfg.dataset.subjects or list(ds.subjects)
    unknown = [s for s in subjects if s not in ds.subjects]
    if unknown:
        raise ValidationError(f"dataset.subjects: {unknown} not in dataset {ds.name} (subjects: {ds.subjects})")
    for s in subjects:
        _check_subject(cfg, ds, s)
    return subjects


def _check_subject(cfg: RunConfig, ds, s: str) -> None:
    """Subject ``s`` has stories enough for the CV folds, test stories, and test TRs for the permutation blocks."""
    n_train, n_test = len(ds.train_stories_of(s)), len(ds.test_stories_of(s))
    if n_train < cfg.encoding.n_folds:
        raise ValidationError(
            f"encoding.n_folds: {cfg.encoding.n_folds} folds need at least as many training stories, "
            f"but subject {s} has {n_train}"
        )
    if n_test == 0:
        raise ValidationError(f"dataset: subject {s} has none of the test stories {ds.test_stories}")
    if cfg.stats.test == "block":
        n_trs = sum(ds.stories[st].n_trs for st in ds.test_stories_of(s))
        if n_trs // cfg.stats.block_size < MIN_PERMUTATION_BLOCKS:
            raise ValidationError(
                f"stats.block_size: {cfg.stats.block_size} TRs make only {n_trs // cfg.stats.block_size} blocks of "
                f"subject {s}'s {n_trs} test TRs; a permutation test needs at least {MIN_PERMUTATION_BLOCKS} (use a "
                f"block size of at most {max(n_trs // MIN_PERMUTATION_BLOCKS, 1)}, or stats.test: sign)"
            )


def _check_options(cfg: RunConfig) -> None:
    """Options that need each other."""
    if cfg.rois.how == "fraction_significant" and cfg.stats.test == "none":
        raise ValidationError("rois.how: 'fraction_significant' needs significance tests: stats.test is 'none'")
    if cfg.executor.stages == "separate" and not cfg.features.cache:
        raise ValidationError("executor.stages: 'separate' hands the features to the fits through the feature cache: "
                              "features.cache is false")
    from ..dynamics.states import loads_model

    loads = loads_model(cfg.internal_states)
    if cfg.executor.stages == "separate" and loads:
        raise ValidationError(f"internal_states: {', '.join(loads)} load the model in the fits stage, which with "
                              "executor.stages: 'separate' has no weights; use stages: together")


@dataclass(frozen=True)
class _TargetSpace:
    """Where the store's maps live: the space's name, its targets, their hemispheres, the projection."""

    space: str
    n_targets: int
    hemi: np.ndarray
    projection: str | None
    spaces: dict  # each subject's own space
    first: Any  # the first subject's space


def _target_space(cfg: RunConfig, ds, subjects: list[str]) -> _TargetSpace:
    """The space the store's maps are in: the subjects' own, or the fsaverage level they are projected to."""
    spaces = {s: ds.space(s) for s in subjects}
    names = {sp.name for sp in spaces.values()}
    if len(names) > 1 and any(sp.is_surface for sp in spaces.values()):
        raise ValidationError(f"dataset.subjects: subjects are in different spaces {sorted(names)}")
    first = spaces[subjects[0]]
    projection = _projection(cfg, ds, subjects, spaces)
    if projection:
        n_targets = 2 * FSAVERAGE_SIZES[projection]
        hemi = Space.fsaverage(projection).hemi()
    else:
        n_targets = max(sp.n_targets for sp in spaces.values())
        hemi = first.hemi() if first.is_surface else np.full(n_targets, "", dtype="<U1")
    return _TargetSpace(projection or first.name, n_targets, hemi, projection, spaces, first)


def _roi_names(cfg: RunConfig, subjects: list[str], targets: _TargetSpace) -> list[str]:
    """The store's ROIs: the atlas's (an fsaverage space), else ``whole_cortex`` (when the config allows it)."""
    from .. import rois

    space = targets.space
    if _atlas_space(space):
        atlas = rois.load_atlas(cfg.rois.atlas, space=space)
        if targets.projection:  # the ROIs reach every subject's voxels (as run_checkpoint loads them; maps built, cached)
            for s in subjects:
                rois.load_atlas(cfg.rois.atlas, targets.spaces[s])
        return [atlas.names[k] for k in sorted(atlas.names) if k != 0]
    if cfg.rois.atlas != "whole_cortex":
        raise ValidationError(
            f"rois.atlas: {cfg.rois.atlas!r} needs an fsaverage space, but the data are in {targets.first.name!r}; "
            "use 'whole_cortex' (the mean over all targets), or, for lebel2023, get the subjects' pycortex and "
            "FreeSurfer files (`brainalign datasets check lebel2023 ROOT`) so the sweep can use fsaverage5"
        )
    return ["whole_cortex"]


def _projection(cfg: RunConfig, ds, subjects: list[str], spaces: dict) -> str | None:
    """The fsaverage level to project the subjects' voxel maps to (``rois.space``), or None.

    ``auto``: fsaverage5 when the subjects are LeBel 2023 volumes with their surfaces
    (:class:`~brainalign.surfaces.subject.SubjectSpace`), None for other data. A subject
    that cannot be projected (UTS09 has no FreeSurfer folder, so no sphere.reg) is an
    error naming it and what it lacks, never a silent fallback.
    """
    from ..surfaces.subject import SubjectSpace

    want = cfg.rois.space
    first = spaces[subjects[0]]
    if first.is_surface:
        if want not in ("auto", "native", first.name):
            raise ValidationError(f"rois.space: {want!r}, but the data are already on {first.name}; use auto")
        return None
    if want == "native" or (want == "auto" and not any(isinstance(spaces[s], SubjectSpace) for s in subjects)):
        return None
    level = "fsaverage5" if want == "auto" else want
    bad = {s: _no_projection(ds, s, spaces[s]) for s in subjects
           if not (isinstance(spaces[s], SubjectSpace) and spaces[s].can_project)}
    if bad:
        why = "; ".join(f"{s}: {reason}" for s, reason in bad.items())
        raise ValidationError(
            f"rois.space: {want} puts every subject's maps on {level}, but subject(s) {', '.join(bad)} cannot be "
            f"projected there ({why}). Leave them out of dataset.subjects, or set rois.space: native (each subject's "
            "own voxels, whole_cortex only, no flatmaps)"
        )
    return level


def _no_projection(ds, subject: str, space) -> str:
    """Why ``subject`` cannot be projected to fsaverage, in words."""
    if getattr(space, "no_sphere", ""):
        return space.no_sphere
    note = (ds.info.get("surfaces") or {}).get(subject) if isinstance(ds.info, dict) else None
    return note or f"its space {space.name!r} has no surfaces"


# -- one task ----------------------------------------------------------------------
#: variables only a sweep stores, beside :func:`brainalign.encoding.fit`'s (name -> (dims, dtype))
SWEEP_VARIABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "roi_cv_score": (("checkpoint", "layer", "subject", "roi"), "float32"),  # ROI mean of cv_score (layer choice)
    "feature_norm": (("checkpoint", "layer"), "float32"),
    "lm_loss": (("checkpoint",), "float32"),
    "task_seconds": (("checkpoint",), "float32"),
    "task_peak_rss_mb": (("checkpoint",), "float32"),
}


def _variables(plan: Plan) -> dict[str, tuple[tuple[str, ...], str]]:
    """The store's per-checkpoint variables: name -> (dims, dtype).

    :data:`brainalign.encoding.SCORE_VARIABLES` of the fit a task runs (with ROIs, and
    with significance unless ``stats.test`` is ``none``), ``checkpoint`` prepended, then
    :data:`SWEEP_VARIABLES`. The noise ceiling is not a per-checkpoint variable (written
    once at creation) and ``score_normalised`` is not stored (score / ceiling).
    """
    from ..encoding.variables import fit_variables

    from ..dynamics.states import state_variables

    fitted = fit_variables(stats=plan.config.stats.test != "none", rois=True, ceiling=False)
    states = state_variables(plan.config.internal_states, reserved=[*fitted, *SWEEP_VARIABLES, "ceiling"])
    return {**{name: (("checkpoint", *v.dims), v.dtype) for name, v in fitted.items()}, **SWEEP_VARIABLES,
            **{name: (("checkpoint", *dims), dtype) for name, (dims, dtype) in states.items()}}


def _state_axes(plan: Plan) -> dict[str, int]:
    """The internal states' own axes (``chain``, ``draw`` of the LLC) and their lengths."""
    from ..dynamics.states import state_axes

    return state_axes(plan.config.internal_states, {"llc": plan.config.llc.model_dump()})


#: the store's labelled axes: a result's labels are placed where the plan has them
_LABELLED_AXES = {"layer": lambda plan: plan.layers, "subject": lambda plan: plan.subjects,
                  "roi": lambda plan: plan.rois}
#: the store's other axes and their lengths: a result fills them from the start (NaN after)
_SIZED_AXES = {"target": lambda plan: plan.n_targets, "boot": lambda plan: BOOTSTRAP["n_boot"],
               "term": lambda plan: _n_terms(plan)}


def _axis_length(plan: Plan, dim: str) -> int:
    """The length of a sized store axis: :data:`_SIZED_AXES`, else an internal state's own (``chain``, ``draw``)."""
    return _SIZED_AXES[dim](plan) if dim in _SIZED_AXES else _state_axes(plan)[dim]


def _placed(plan: Plan, da: xr.DataArray, dims: tuple[str, ...], dtype: str) -> np.ndarray:
    """``da`` on the store's axes ``dims`` (``checkpoint`` left out), NaN (False) where it has no value.

    Along :data:`_LABELLED_AXES` each label goes where the plan has it (labels the plan
    lacks, e.g. an atlas ROI it left out, are dropped); along :data:`_SIZED_AXES` the
    values fill the store's axis from its start.
    """
    da = da.transpose(*dims)
    src, dst, shape = [], [], []
    for d in dims:
        if d in _LABELLED_AXES:
            want = list(_LABELLED_AXES[d](plan))
            here = [(i, want.index(v)) for i, v in enumerate(da[d].values.tolist()) if v in want]
            src.append([i for i, _ in here])
            dst.append([j for _, j in here])
            shape.append(len(want))
        else:
            src.append(np.arange(da.sizes[d]))
            dst.append(np.arange(da.sizes[d]))
            shape.append(_axis_length(plan, d))
    out = np.full(shape, False if dtype == "bool" else np.nan, dtype=dtype)
    out[np.ix_(*dst)] = da.values[np.ix_(*src)].astype(dtype)
    return out


def _region(plan: Plan, res: xr.Dataset, roi: xr.DataArray, fs, roi_cv: xr.DataArray | None = None) -> xr.Dataset:
    """Shape one checkpoint's results to the store's layout (NaN-padded targets).

    Every variable of :func:`_variables` along ``target`` or ``roi`` is read from the
    fit's result ``res`` by name, but ``roi_score`` is ``roi`` (the ``rois.how`` summary)
    and ``roi_cv_score`` is ``roi_cv``, and placed by :func:`_placed`; a score variable
    added to :data:`brainalign.encoding.SCORE_VARIABLES` is stored with no change here.
    ``feature_norm`` and ``lm_loss`` come from the features' metrics.
    """
    given = {**{name: res[name] for name in res.data_vars}, "roi_score": roi}
    if roi_cv is not None:
        given["roi_cv_score"] = roi_cv
    out = {}
    for name, (dims, dtype) in _variables(plan).items():
        if name in given and ({"target", "roi"} & set(dims)):
            out[name] = (dims[1:], _placed(plan, given[name], dims[1:], dtype))
    norms = fs.metrics.get("activation_norm") or {}
    out["feature_norm"] = (("layer",), np.array([norms.get(layer, np.nan) for layer in plan.layers], dtype="float32"))
    loss = fs.metrics.get("mean_loss")  # token-weighted next-token loss on the stories (causal LMs)
    out["lm_loss"] = ((), np.float32(np.nan if loss is None else loss))
    return xr.Dataset(out)


def checkpoint_features(plan: Plan, index: int, progress: bool = False, before_load=None):
    """The features of checkpoint ``index`` at the plan's layers (from the feature cache
    when they are there): the first stage of :func:`run_checkpoint`. ``before_load`` is
    called before the model is loaded, only when something is not cached."""
    from .. import features

    cfg, ckpt = plan.config, plan.checkpoints[index]
    return features.extract(
        plan.dataset(),
        model=ckpt.model,
        revision=ckpt.revision,
        layers=plan.layers,
        **cfg.features.extract_options(),
        training={"step": None if np.isnan(ckpt.step) else ckpt.step, "tokens": None if np.isnan(ckpt.tokens) else ckpt.tokens},
        trust_remote_code=cfg.model.trust_remote_code,
        progress=progress,
        before_load=before_load,
    )


class _NoStream:
    """Weights left where they are (local folders, or ``weights.keep`` with no budget)."""

    def schedule(self, revisions) -> None:
        pass

    def free_unscheduled(self, keep) -> None:
        pass

    def acquire(self, revision) -> None:
        pass

    def done(self, revision) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def weight_stream(plan: Plan, prefetch: int | None = None):
    """A :class:`~brainalign.features.weights.WeightStream` for the plan's hub revisions
    (``weights:`` settings), or a stand-in that does nothing for local folders. Use as
    a context manager; ``acquire``/``done`` take a revision name (or None)."""
    w = plan.config.weights
    hub = [c for c in plan.checkpoints if c.revision is not None and not Path(c.model).expanduser().is_dir()]
    if not hub or (w.keep and w.disk_budget is None):
        return _NoStream()
    from huggingface_hub import constants

    from ..features.weights import WeightStream

    return WeightStream(hub[0].model, constants.HF_HUB_CACHE, w.disk_budget, keep=w.keep, mirror=w.mirror,
                        prefetch=w.prefetch if prefetch is None else prefetch)


def extract_checkpoint(plan: Plan, index: int) -> dict:
    """The features stage alone (into the feature cache), for executors that run it apart
    from the fits (``executor.stages: separate``): fetches the revision's weights, extracts
    every layer, frees the weights (``weights:``). Skips a checkpoint already done."""
    ckpt = plan.checkpoints[index]
    if ResultsStore(plan.store_path).done(ckpt.label, plan.settings_hash):
        return {"label": ckpt.label, "skipped": True}
    t0 = time.perf_counter()
    with weight_stream(plan, prefetch=0) as ws:
        checkpoint_features(plan, index, before_load=lambda: ws.acquire(ckpt.revision))
        ws.done(ckpt.revision)
    return {"label": ckpt.label, "skipped": False, "seconds": time.perf_counter() - t0, "host": socket.gethostname()}


def run_checkpoint(plan: Plan, index: int, progress: bool = False, before_load=None) -> dict:
    """Features -> encoders -> ROI summary for one checkpoint; writes its region.
    ``before_load``: see :func:`checkpoint_features` (a sweep fetches weights there)."""
    from .. import encoding, rois
    from ..surfaces.atlases import whole_targets

    cfg = plan.config
    ckpt = plan.checkpoints[index]
    store = ResultsStore(plan.store_path)
    if store.done(ckpt.label, plan.settings_hash):
        return {"label": ckpt.label, "skipped": True}
    t0, started = time.perf_counter(), datetime.now(timezone.utc).isoformat()
    ds = plan.dataset()
    fs = checkpoint_features(plan, index, progress=progress, before_load=before_load)
    if plan.projection:  # the atlas is carried to each subject's voxels (rois.load_atlas on its SubjectSpace)
        atlas = cfg.rois.atlas
    elif _atlas_space(plan.space):
        atlas = rois.load_atlas(cfg.rois.atlas, space=plan.space)
    else:  # no atlas for this space: all targets
        atlas = whole_targets(plan.n_targets, plan.space)
    e = cfg.encoding
    res = encoding.fit(
        fs,
        ds,
        layers=plan.layers,
        subjects=plan.subjects,
        alphas=e.alpha_values(),
        n_folds=e.n_folds,
        backend=e.backend,
        delays=tuple(e.delays),
        stats=cfg.stats.test != "none",
        stats_test="sign" if cfg.stats.test == "none" else cfg.stats.test,
        n_permutations=cfg.stats.permutations,
        block_size=cfg.stats.block_size,
        fdr=cfg.stats.fdr,
        progress=progress,
        rois=atlas,
        n_boot=BOOTSTRAP["n_boot"],
        boot_block_length=BOOTSTRAP["block_length"],
        random_state=BOOTSTRAP["seed"],
        ceiling=None,  # the same for every checkpoint: stored once, when the store is created (_ceilings)
    )
    agg = rois.aggregate(res, atlas=atlas, how=cfg.rois.how, dataset=ds if plan.projection else None)
    roi = agg["fraction_significant" if cfg.rois.how == "fraction_significant" else "score"]
    if plan.projection:  # ROI scores were taken on the voxels; the maps go to fsaverage
        from ..surfaces import project

        res = project(res, ds, to=plan.projection,
                      variables=[v for v, (dims, _) in _variables(plan).items() if dims[-1] == "target" and v in res])
    region = _region(plan, res, roi, fs, roi_cv=agg["cv_score"])
    for name, v in _states_region(plan, index, before_load).items():
        region[name] = v
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    region["task_seconds"] = ((), np.float32(seconds))
    region["task_peak_rss_mb"] = ((), np.float32(peak))
    prov = {
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(),
        "seconds": seconds,
        "peak_rss_mb": peak,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    store.write_region(ckpt.label, region, plan.settings_hash, prov)
    log.info("checkpoint %s done in %.1f s", ckpt.label, seconds)
    return {"label": ckpt.label, "skipped": False, **prov}


# -- executors (brainalign.sweep.executors) -------------------------------------------
slurm_cluster = _executors.slurm_cluster  # the old home of slurm_cluster


def _ceilings(plan: Plan) -> dict:
    """Noise ceilings (subject x target) from the test stories' repeats, when all have them."""
    from ..encoding.api import dataset_ceiling

    ds = plan.dataset()
    out = np.full((len(plan.subjects), plan.n_targets), np.nan, dtype="float32")
    for i, s in enumerate(plan.subjects):
        c = dataset_ceiling(ds, s, ds.test_stories_of(s))  # make_plan checked each has test stories
        if c is None:
            return {}
        if plan.projection:
            from ..surfaces import project_array

            c = project_array(c, ds.space(s), plan.projection)
        out[i, : c.size] = c
    return {"ceiling": (("subject", "target"), out)}


def _provenance(plan: Plan) -> dict:
    import importlib.metadata as md

    versions = {}
    for dist in ("numpy", "scipy", "scikit-learn", "himalaya", "torch", "transformers", "xarray", "zarr", "nilearn"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    commit = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "brainalign_version": __version__,
        "package_versions": versions,
        "git_commit": commit,
        "python": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(),
    }


def _n_blocks(plan: Plan) -> int:
    """Fewest bootstrap blocks any subject's test stories make (the intervals' degrees of freedom)."""
    from ..encoding.bootstrap import tr_blocks

    ds = plan.dataset()
    return min(int(tr_blocks([ds.stories[st].n_trs for st in ds.test_stories_of(s)], BOOTSTRAP["block_length"])[-1]) + 1
               for s in plan.subjects)


def _n_terms(plan: Plan) -> int:
    """Most DCT terms of any subject's held-out stories (the ROI sign test's ``term`` axis)."""
    ds = plan.dataset()
    return max(sum(ds.stories[st].n_trs for st in ds.test_stories_of(s)) - len(ds.test_stories_of(s))
               for s in plan.subjects)


def _create_store(plan: Plan, store: ResultsStore, force: bool) -> None:
    """The empty store of ``plan`` (or the existing one, checked and extended)."""
    coords = {
        "checkpoint": np.array([c.label for c in plan.checkpoints]),
        "step": ("checkpoint", np.array([c.step for c in plan.checkpoints], dtype=float)),
        "tokens": ("checkpoint", np.array([c.tokens for c in plan.checkpoints], dtype=float)),
        "layer": np.array(plan.layers),
        "depth": ("layer", np.array(plan.layers, dtype=float) / max(plan.n_layers, 1)),
        "subject": np.array(plan.subjects),
        "target": np.arange(plan.n_targets),
        "hemi": ("target", plan.hemi),
        "roi": np.array(plan.rois),
        "boot": np.arange(BOOTSTRAP["n_boot"]),
        "term": np.arange(_n_terms(plan)),
        **{ax: np.arange(n) for ax, n in _state_axes(plan).items()},
    }
    cfg = plan.config
    _reuse_store(plan, store, force)
    attrs = {
        "config": cfg.model_dump(mode="json"),
        "settings_hash": plan.settings_hash,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "space": plan.space,
        "n_layers": plan.n_layers,
        "bootstrap": {**BOOTSTRAP, "n_blocks": _n_blocks(plan),
                      "over": "test-story TR blocks (within stories), resampled with replacement; "
                              "the same draws at every checkpoint and layer"},
        "layer_rule": "cv",
        "feature_cache_dtype": cfg.features.extract_options()["cache_dtype"],
        **_provenance(plan),
    }
    note = plan.dataset().info.get("ceiling")
    if isinstance(note, str):
        attrs["ceiling_note"] = note
    if plan.projection:
        attrs["projection"] = _projection_attrs(plan)
    if cfg.internal_states:
        attrs["internal_states"] = _states_attrs(plan)
    store.create(coords, _variables(plan), attrs=attrs, layout_key=plan.layout_key(), force=force, data=_ceilings(plan))


def _states_attrs(plan: Plan) -> dict:
    """What the stored internal states are and how they were computed (store attribute ``internal_states``)."""
    from ..dynamics.states import STATE_METRICS, curve_variables, llc_data

    cfg = plan.config
    out = {"computed": list(cfg.internal_states),
           "descriptions": {n: STATE_METRICS[n].description for n in cfg.internal_states},
           "variables": {v: list(dims) for n in cfg.internal_states for v, (dims, _) in STATE_METRICS[n].variables.items()},
           "curves": curve_variables(cfg.internal_states)}
    if "llc" in cfg.internal_states:
        from ..dynamics.llc import SETTLE_TOL
        from ..features.loading import resolve_device

        ctx = _state_context(cfg, plan.dataset(), plan.checkpoints[-1])
        # SGLD draws differ between devices: a sweep resumed on another device mixes random streams
        out["llc"] = {"settings": cfg.llc.model_dump(), "settle_tol": SETTLE_TOL, "data": llc_data(ctx)[2],
                      "device": str(resolve_device(cfg.features.device, "float32")[0])}
    return out


def _states_region(plan: Plan, index: int, before_load) -> dict:
    """The internal states of checkpoint ``index``, shaped to the store (``before_load``
    first when one of them loads the weights)."""
    from ..dynamics.states import compute_states, loads_model

    cfg = plan.config
    if not cfg.internal_states:
        return {}
    if before_load is not None and loads_model(cfg.internal_states):
        before_load()
    vals = compute_states(cfg.internal_states, _state_context(cfg, plan.dataset(), plan.checkpoints[index]))
    out = {}
    for name, (dims, dtype) in _variables(plan).items():
        if name in vals:
            da = xr.DataArray(np.asarray(vals[name]), dims=dims[1:])
            if "layer" in da.dims:  # values in the plan's layer order
                da = da.assign_coords(layer=plan.layers[: da.sizes["layer"]])
            out[name] = (dims[1:], _placed(plan, da, dims[1:], dtype))
    return out


def _projection_attrs(plan: Plan) -> dict:
    """How the store's maps came to fsaverage, and from which files (store attribute ``projection``)."""
    from ..surfaces.project import describe
    from ..surfaces.subject import MAPPER_VERSION

    ds = plan.dataset()
    subjects = {}
    for s in plan.subjects:
        sp = ds.space(s)
        subjects[s] = {"n_voxels": sp.n_targets, "mask": sp.mask_file, "transform": sp.xfm_file,
                       "reference": sp.reference, "surfaces": [*sp.surfaces["wm"], *sp.surfaces["pia"]],
                       "sphere_reg": list(sp.spheres)}
    return {
        "to": plan.projection,
        "from": "each subject's voxels (the columns of its responses)",
        "maps": describe(plan.projection),
        "rois": ("ROI scores (roi_score, roi_cv_score, roi_boot, roi_null) are taken on each subject's voxels before "
                 f"projection: the {plan.config.rois.atlas!r} atlas carried from fsaverage5 to the voxels through the "
                 "same map (each voxel in the ROI that carries most of its weight), so the ROI scores, their bootstrap "
                 "and their sign test use the same voxels; a mean of the projected score over an ROI's vertices "
                 "weighs voxels by how many vertices they reach and can differ a little"),
        "mapper_version": MAPPER_VERSION,
        "subjects": subjects,
    }


def _reuse_store(plan: Plan, store: ResultsStore, force: bool, dry_run: bool = False) -> str:
    """Check an existing store's settings against ``plan``'s before anything is written.

    A store whose hash differs only because the hash's formula or defaults changed (its
    saved config, read by this version, has this plan's settings) is re-keyed; any other
    difference is refused, naming the settings that differ. ``dry_run``: only check
    (nothing is re-keyed). Returns the hash the store's done markers carry (after the
    re-keying).
    """
    if force or not store.exists() or store.layout().get("hash") == plan.settings_hash:
        return plan.settings_hash
    stored = store.open().attrs.get("config", "{}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UnusedSettingWarning)  # the store's own copy: told when it was made
            old = load_config(json.loads(stored) if isinstance(stored, str) else stored)
    except (ValidationError, ValueError):
        old = None
    if old is not None and old.features.float16 and store.open().attrs.get("feature_cache_dtype") != "float16":
        raise IncompatibleStoreError(
            f"results store {store.path} says features.float16: true but was made by a version that cached the "
            "features in float32 anyway; this version stores them in float16, so the checkpoints would differ. Use "
            "another output store, or --force to discard it and start over")
    if old is not None and config_hash(old) == plan.settings_hash:
        if dry_run:
            return store.layout()["hash"]
        store.rehash(store.layout()["hash"], plan.settings_hash)
        log.info("results store %s: re-keyed to this version's settings hash (same settings)", store.path)
        return plan.settings_hash
    diff = "; ".join(settings_diff(old, plan.config)) if old is not None else "its saved config cannot be read"
    raise IncompatibleStoreError(f"results store {store.path} was made with other settings ({diff}); use another "
                                 "output store, or --force to discard it and start over")


def _downstream(plan: Plan):
    from .downstream import downstream_for_plan

    return downstream_for_plan(plan)


def _store_downstream(plan: Plan, down) -> None:
    """The downstream table as the store's ``downstream`` zarr group (rewritten each run:
    the files may have gained results)."""
    from .downstream import DOWNSTREAM_GROUP
    from .store import _quiet, _zarr_kwargs

    with _quiet():
        down.to_zarr(plan.store_path, group=DOWNSTREAM_GROUP, mode="w", **_zarr_kwargs())


def _todo(plan: Plan, store: ResultsStore) -> list[int]:
    """Checkpoints not done yet, and done ones whose chunk files went missing (redone)."""
    planned = {c.label for c in plan.checkpoints}
    for label, files in store.missing_chunks().items():
        if label not in planned:
            continue
        log.warning("results store %s: done checkpoint %r lost chunk files (%s); redoing it", store.path, label,
                    ", ".join(files[:3]))
        store.undo(label)
    return [i for i, c in enumerate(plan.checkpoints) if not store.done(c.label, plan.settings_hash)]


def run(
    config: RunConfig | str | Path | dict,
    force: bool = False,
    executor: str | None = None,
    workers: int | None = None,
    client=None,
    progress: bool = True,
) -> "Sweep":
    """Run (or resume) a sweep and return its results.

    Parameters
    ----------
    config : a :class:`RunConfig`, a YAML path or a dict.
    force : discard an existing store made with other settings and start over.
    executor : a registered executor (``"local"``, ``"dask"``, ``"slurm"``, or one added with
        :func:`brainalign.sweep.register_executor`); overrides the config.
    workers : number of Dask workers or SLURM jobs (overrides the config).
    client : an existing ``distributed.Client`` to run on.
    """
    cfg = (config if isinstance(config, RunConfig) else load_config(config)).with_executor(executor, workers)
    chosen = _executors.executor(cfg.executor.kind)
    if chosen.check is not None and client is None:
        chosen.check()
    store = ResultsStore(Path(cfg.output.store).expanduser())
    with store.writer():
        plan = make_plan(cfg)
        down = _downstream(plan)  # files that match no checkpoint are refused before any work
        _create_store(plan, store, force)
        if down is not None:  # a copy in the store, so a report from a received store shows it
            _store_downstream(plan, down)
        todo = _todo(plan, store)
        log.info("%d of %d checkpoints to do", len(todo), len(plan.checkpoints))
        if todo and client is not None:  # a Dask client given: the tasks run on it, whatever executor.kind says
            _executors.run_on_client(plan, todo, progress=progress, client=client,
                                     resources=_executors.gpu_resources(plan))
        elif todo:
            chosen.run(plan, todo, progress=progress, workers=workers)
        store.set_attrs(completed=datetime.now(timezone.utc).isoformat(), tasks=store.done_info())
    return Sweep(plan.store_path)


class Sweep:
    """A finished (or partly finished) sweep's results store."""

    def __init__(self, path: str | os.PathLike):
        self.store = ResultsStore(path)
        self.path = Path(path)

    @property
    def results(self) -> xr.Dataset:
        """The store in memory, checkpoints in training order (tokens, then step)."""
        ds = self.store.load()
        order = np.lexsort((ds["step"].values, ds["tokens"].values))
        return ds.isel(checkpoint=order)

    @property
    def config(self) -> dict:
        return self.results.attrs.get("config", {})

    def roi_curve(self, roi: str = "whole_cortex", layer: int | str = "best") -> xr.DataArray:
        """Held-out alignment of ``roi`` over checkpoints (subject x checkpoint).

        ``layer="best"`` takes, for each checkpoint, the layer chosen by
        :func:`brainalign.rois.choose_layer`: the best subject-mean training-story CV
        score (``roi_cv_score``; stores without one fall back to the held-out score,
        with a warning); the chosen layers are the ``layer`` coordinate and the rule
        the ``layer_rule`` attribute. An int takes that layer.
        """
        from ..rois import choose_layer

        res = self.results
        rs = res["roi_score"]
        if roi not in rs.roi.values:
            raise ValidationError(f"no ROI {roi!r} in {self.path} (ROIs: {list(rs.roi.values)})")
        r = rs.sel(roi=roi)
        if layer == "best":
            cv = res["roi_cv_score"].sel(roi=roi) if "roi_cv_score" in res else None
            chosen = choose_layer(r, cv)
            out = chosen["score"].assign_coords(layer=chosen["best_layer"])
            out.attrs["layer_rule"] = chosen.attrs["layer_rule"]
            return out.rename("roi_score")
        return r.sel(layer=int(layer))

    def __repr__(self) -> str:
        return f"Sweep({self.path})"
