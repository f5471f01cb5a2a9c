"""The run config: a YAML file validated by pydantic, errors naming the key and line.

Example::

    dataset:
      name: lebel2023
      root: ~/data/ds003020
      subjects: [UTS01, UTS02]
    model:
      name: EleutherAI/pythia-160m
      revisions: {log_spaced: 10}      # or a list, or {every: 8}
    layers: all                        # or [0, 4, 8], or {depths: [0.25, 0.5, 1.0]}
    features: {context_tokens: 512}
    encoding: {alphas: {logspace: [0, 6, 13]}, n_folds: 5, backend: auto}
    stats: {test: sign, fdr: 0.05}  # or test: block (permutations: 1000, block_size: 20), or none
    rois: {atlas: language}          # space: auto (LeBel with surfaces: fsaverage5), fsaverage5, native
    output: {store: results.zarr}
    executor: {kind: local}
    weights: {disk_budget: 30GB}       # hub revisions freed after use (keep: true keeps them); mirror:, prefetch:
    downstream: evals/                 # lm-evaluation-harness results (or a CSV, or a list); optional:
                                       # {path: evals/, metric: acc, tokens_per_step: 2097152}
    internal_states: [llc, weight_norm]  # stored per checkpoint (dynamics.states); memorisation: train-tiny runs
    llc: {draws: 100, chains: 2}       # the LLC's SGLD settings (dynamics.llc.LLCSettings) and data
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
from pydantic import Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from .._yaml import StrictModel, read_yaml_model
from ..dynamics.llc import LLCSettings
from ..errors import ValidationError

__all__ = ["RunConfig", "DownstreamConfig", "LLCConfig", "load_config", "config_hash", "check_slurm_available"]


class DatasetConfig(StrictModel):
    name: str
    root: str | None = None
    subjects: list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class EveryN(StrictModel):
    every: int = Field(gt=0)


class LogSpaced(StrictModel):
    log_spaced: int = Field(gt=1)


class ModelConfig(StrictModel):
    name: str
    revisions: Union[list[str], EveryN, LogSpaced, None] = None
    #: revision -> training tokens (or {"step":..., "tokens":...}) when the names do not say
    training_axis: dict[str, Any] | None = None
    trust_remote_code: bool = False


class Depths(StrictModel):
    depths: list[float]

    @field_validator("depths")
    @classmethod
    def _in_unit(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 <= d <= 1.0 for d in v):
            raise ValueError("relative depths must be between 0 and 1")
        return v


class FeatureConfig(StrictModel):
    context_tokens: int = Field(512, gt=1)
    batch_size: int = Field(8, gt=0)
    device: str = "auto"
    dtype: str = "auto"
    #: how a word's tokens make its state: the last token's hidden state, or their mean
    word_state: Literal["last", "mean"] = "last"
    cache: bool = True
    #: store the cached features in float16 (``features.extract(cache_dtype="float16")``)
    float16: bool = False

    @model_validator(mode="before")
    @classmethod
    def _before_word_state(cls, v: Any) -> Any:
        """Configs from before ``features.word_state`` said ``word_reduction``."""
        if isinstance(v, dict) and "word_reduction" in v:
            v = dict(v)
            old = v.pop("word_reduction")
            if "word_state" in v and v["word_state"] != old:
                raise ValueError(f"word_reduction ({old!r}) and word_state ({v['word_state']!r}) disagree; give word_state")
            v["word_state"] = old
            warnings.warn("features.word_reduction is deprecated; use features.word_state", DeprecationWarning,
                          stacklevel=2)
        return v

    def extract_options(self) -> dict[str, Any]:
        """This section as :func:`brainalign.features.extract` keyword arguments
        (through :func:`brainalign.features.extract_options`: ``float16`` -> ``cache_dtype``)."""
        from ..features import extract_options

        return extract_options(self.model_dump())

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        from ..features.loading import check_device

        return check_device(v)


class LogSpace(StrictModel):
    logspace: tuple[float, float, int]


class EncodingConfig(StrictModel):
    alphas: Union[list[float], LogSpace] = Field(default_factory=lambda: LogSpace(logspace=(0.0, 6.0, 13)))
    n_folds: int = Field(5, ge=2)
    backend: str = "auto"
    delays: list[int] = Field(default_factory=lambda: [1, 2, 3, 4])

    def alpha_values(self) -> np.ndarray:
        if isinstance(self.alphas, LogSpace):
            a, b, n = self.alphas.logspace
            return np.logspace(a, b, int(n))
        return np.asarray(self.alphas, dtype=float)


class StatsConfig(StrictModel):
    #: significance test of each target's held-out r: "sign" (spectral sign randomisation,
    #: analytic; holds its level on BOLD autocorrelation), "block" (block permutation), "none"
    test: Literal["sign", "block", "none"] = "sign"
    #: the block test's number of block orders and block length in TRs
    permutations: int = Field(1000, ge=1)
    block_size: int = Field(20, gt=0)
    #: Benjamini-Hochberg FDR level over the targets of each layer and subject
    fdr: float = Field(0.05, gt=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _before_test_key(cls, v: Any) -> Any:
        """Configs from before ``stats.test``: permutations > 0 meant the block test, 0 none."""
        if isinstance(v, dict) and "test" not in v and "permutations" in v:
            v = dict(v)
            n = v.pop("permutations")
            v["test"] = "block" if n else "none"
            if n:
                v["permutations"] = n
            warnings.warn(f"stats.permutations: {n} without stats.test is read as stats.test: {v['test']}; "
                          "say stats.test (the default, 'sign', needs no permutations)", DeprecationWarning, stacklevel=2)
        return v

    def effective(self) -> dict:
        """The settings that change results (the block test's alone use its knobs)."""
        d = self.model_dump(mode="json")
        if self.test != "block":
            d.pop("permutations"), d.pop("block_size")
        if self.test == "none":
            d.pop("fdr")
        return d


class RoiConfig(StrictModel):
    atlas: str = "whole_cortex"
    how: Literal["mean", "top10", "fraction_significant"] = "mean"
    #: where a sweep on subjects' voxels (LeBel 2023 with its surfaces) stores its maps:
    #: "auto" (fsaverage5 when every subject can be projected there, else the data's own
    #: space), an fsaverage level (required; a subject that cannot be projected is an
    #: error), or "native" (the subjects' own voxels: whole_cortex only, no flatmaps)
    space: str = "auto"

    @field_validator("space")
    @classmethod
    def _known_space(cls, v: str) -> str:
        from ..stimulus import FSAVERAGE_SIZES

        if v not in ("auto", "native", *FSAVERAGE_SIZES):
            raise ValueError(f"unknown space {v!r}; use auto, native or one of {', '.join(FSAVERAGE_SIZES)}")
        return v


class OutputConfig(StrictModel):
    store: str = "results.zarr"
    #: where ``brainalign run`` writes each report figure as a PNG (default: none)
    figures: str | None = None
    #: where ``brainalign run`` writes the HTML report (default: next to the store; ``--report`` overrides)
    report: str | None = None


class SlurmConfig(StrictModel):
    queue: str | None = None
    cores: int = 4
    memory: str = "16GB"
    gpus: int = 0
    walltime: str = "04:00:00"
    jobs: int = 1
    job_extra_directives: list[str] = Field(default_factory=list)
    #: passed to dask's scheduler (e.g. {"host": ..., "dashboard_address": ":8787"})
    scheduler_options: dict[str, Any] = Field(default_factory=dict)


class ExecutorConfig(StrictModel):
    #: a name registered in :data:`brainalign.sweep.executors.EXECUTORS` (built in: local, dask, slurm)
    kind: str = "local"
    workers: int = Field(2, gt=0)
    #: "together": one task per checkpoint (features then fits); "separate": the features
    #: of each checkpoint are a task of their own (GPU workers under SLURM with gpus), the
    #: fits another that waits for it (needs features.cache: true)
    stages: Literal["together", "separate"] = "together"
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    @field_validator("kind")
    @classmethod
    def _registered(cls, v: str) -> str:
        from .executors import EXECUTORS

        if v not in EXECUTORS:
            names = [repr(n) for n in EXECUTORS]
            expected = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return v


def _check_downstream_file(p: Path) -> None:
    """A downstream source exists and can be read: a CSV or JSON file, or a folder with some."""
    if not p.exists():
        raise ValueError(f"{p} does not exist")
    if p.is_dir():
        files = [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in (".json", ".csv")]
        if not files:
            raise ValueError(f"folder {p} holds no lm-evaluation-harness .json (or .csv) result files")
    elif p.suffix.lower() in (".json", ".csv"):
        files = [p]
    else:
        raise ValueError(f"{p} is neither a .json/.csv result file nor a folder of them")
    for f in files:
        try:
            with open(f, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise ValueError(f"{f} cannot be read ({exc.strerror or exc})") from None


class DownstreamConfig(StrictModel):
    """Downstream-task results on the sweep's checkpoints (``downstream:``).

    ``path``: a folder of lm-evaluation-harness result files (searched recursively), a
    CSV (columns checkpoint, task, metric, value), or a list of them; relative paths are
    read from the working directory and stored absolute. ``metric``: the metric of every
    task (default ``acc``; IFEval, which has none, uses ``prompt_level_strict_acc``), or
    a mapping task -> metric. ``tokens_per_step``: for checkpoint names that give only a
    step. The written form ``downstream: evals/`` (or a list) is short for ``{path: ...}``.
    """

    path: Union[str, list[str]]
    metric: Union[str, dict[str, str]] = "acc"
    tokens_per_step: float | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, (str, list)) else v

    @field_validator("path")
    @classmethod
    def _readable(cls, v: Union[str, list[str]]) -> Union[str, list[str]]:
        paths = [v] if isinstance(v, str) else list(v)
        if not paths:
            raise ValueError("no result files given")
        out = []
        for s in paths:
            p = Path(s).expanduser().resolve()
            _check_downstream_file(p)
            out.append(str(p))
        return out[0] if isinstance(v, str) else out

    def paths(self) -> list[Path]:
        return [Path(p) for p in ([self.path] if isinstance(self.path, str) else self.path)]


class WeightsConfig(StrictModel):
    """Where hub revisions' weights live while a sweep runs (not part of the hash: they
    change no stored value). Local checkpoint folders are never touched."""

    #: keep every fetched revision in the Hugging Face cache (default: free each one
    #: after its features are extracted; features are the durable artefact)
    keep: bool = False
    #: most bytes of weights on disk at once, e.g. "30GB" (None: no limit)
    disk_budget: Union[int, str, None] = None
    #: a Hugging Face cache folder to copy revisions from instead of downloading them
    mirror: str | None = None
    #: revisions fetched ahead while the current one computes (within the budget)
    prefetch: int = Field(1, ge=0)

    @field_validator("disk_budget")
    @classmethod
    def _size(cls, v):
        from ..features.weights import parse_bytes

        try:
            return parse_bytes(v, "size")
        except Exception as exc:  # ValidationError -> pydantic's message, which names the key
            raise ValueError(str(exc).split(": ", 1)[-1]) from None

    @field_validator("mirror")
    @classmethod
    def _mirror(cls, v):
        if v is not None and not Path(v).expanduser().is_dir():
            raise ValueError(f"weights.mirror: folder {v} does not exist")
        return v


_LLC = LLCSettings()  # the defaults of the llc: section


class LLCConfig(StrictModel):
    """The ``llc:`` section: the SGLD settings of :class:`brainalign.dynamics.llc.LLCSettings`
    (same names and defaults) and the data the LLC is measured on: a train-tiny task
    model's training data, else ``sequences`` windows of ``seq_len`` tokens of the
    stimulus stories."""

    lr: float = Field(_LLC.lr, gt=0)
    n_beta: float = Field(_LLC.n_beta, gt=0)
    localization: float = Field(_LLC.localization, ge=0)
    chains: int = Field(_LLC.chains, ge=1)
    draws: int = Field(_LLC.draws, ge=8)
    batch_size: int = Field(_LLC.batch_size, ge=1)
    seed: int = Field(_LLC.seed)
    restrict: str | None = None
    sequences: int = Field(256, ge=1)
    seq_len: int = Field(64, ge=2)


class UnusedSettingWarning(UserWarning):
    """A config section that nothing reads (e.g. ``llc:`` without ``llc`` in ``internal_states``)."""


class RunConfig(StrictModel):
    dataset: DatasetConfig
    model: ModelConfig
    layers: Union[Literal["all"], list[int], Depths] = "all"
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    encoding: EncodingConfig = Field(default_factory=EncodingConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    rois: RoiConfig = Field(default_factory=RoiConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    #: hub revisions' weights: freed after use, within a disk budget (not part of the hash)
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    #: downstream-task results read onto the sweep's checkpoints (not part of the hash)
    downstream: DownstreamConfig | None = None
    #: internal-state metrics stored per checkpoint (:data:`brainalign.dynamics.states.STATE_METRICS`)
    internal_states: list[str] = Field(default_factory=list)
    #: the LLC's settings (used with ``internal_states: [llc]``)
    llc: LLCConfig = Field(default_factory=LLCConfig)
    #: where the config came from (set by load_config; not part of the hash)
    source: str | None = Field(default=None, exclude=True)

    @field_validator("internal_states", mode="before")
    @classmethod
    def _one_state(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v  # internal_states: llc

    @field_validator("internal_states")
    @classmethod
    def _known_states(cls, v: list[str]) -> list[str]:
        from ..dynamics.states import STATE_METRICS

        unknown = [n for n in v if n not in STATE_METRICS]
        if unknown:
            raise ValueError(f"unknown internal state {', '.join(map(repr, unknown))}; known: {', '.join(STATE_METRICS)}")
        return list(dict.fromkeys(v))

    def resolve_layers(self, n_layers: int) -> list[int]:
        """Layer indices (0 = embeddings .. n_layers) this config asks for."""
        if self.layers == "all":
            return list(range(n_layers + 1))
        if isinstance(self.layers, Depths):
            return sorted({int(round(d * n_layers)) for d in self.layers.depths})
        bad = [layer for layer in self.layers if not 0 <= layer <= n_layers]
        if bad:
            raise ValidationError(f"layers: {bad} out of range for a model with {n_layers} layers (0..{n_layers})")
        return sorted(set(self.layers))

    def with_executor(self, kind: str | None = None, workers: int | None = None) -> "RunConfig":
        """A copy with ``executor.kind`` and ``executor.workers`` replaced, validated.

        ``None`` keeps the config's value. For ``kind="slurm"``, ``workers`` is also the
        number of SLURM jobs (``executor.slurm.jobs``).

        Raises
        ------
        ValidationError
            Naming the argument: an unknown executor kind, or ``workers`` not a positive integer.
        """
        updates = {k: v for k, v in {"kind": kind, "workers": workers}.items() if v is not None}
        if not updates:
            return self
        ex = self.executor.model_dump()
        ex.update(updates)
        if workers is not None and ex["kind"] == "slurm":
            ex["slurm"]["jobs"] = workers
        try:
            executor = ExecutorConfig.model_validate(ex)
        except PydanticValidationError as exc:
            given = {"kind": ("executor", kind), "workers": ("workers", workers), "slurm": ("workers", workers)}
            problems = []
            for err in exc.errors():
                arg, value = given[str(err["loc"][0])]
                problems.append(f"{arg}={value!r}: {err['msg']}")
            raise ValidationError("invalid executor override: " + "; ".join(dict.fromkeys(problems))) from None
        return self.model_copy(update={"executor": executor})


def load_config(path_or_dict: str | Path | dict) -> RunConfig:
    """Read and validate a run config (YAML file or dict).

    Raises
    ------
    ValidationError
        With one line per problem: ``file, line N: key.path: what is wrong``.
    """
    cfg, _, source = read_yaml_model(path_or_dict, RunConfig, "run config")
    cfg.source = source
    # a dumped config always has an llc: section; only settings that differ from the defaults were asked for
    if "llc" not in cfg.internal_states and cfg.llc != LLCConfig():
        warnings.warn(f"{source}: the llc: section has no effect: 'llc' is not in internal_states "
                      f"({', '.join(cfg.internal_states) or 'none'}); add it there, or drop the section",
                      UnusedSettingWarning, stacklevel=2)
    return cfg


def check_slurm_available() -> None:
    """Check that SLURM jobs can be submitted from this machine (``sbatch`` is on PATH).

    Without it, dask-jobqueue would wait forever for workers that are never submitted.

    Raises
    ------
    ValidationError
        When ``sbatch`` is not found.
    """
    if shutil.which("sbatch") is None:
        raise ValidationError(
            "executor.kind: slurm needs the `sbatch` command, which is not on PATH on this machine; "
            "run from a SLURM login node, or use executor kind local or dask"
        )


#: the config sections that change a stored value (ROI scores depend on ``rois``)
HASHED = ("dataset", "model", "layers", "features", "encoding", "stats", "rois")


def settings(cfg: RunConfig) -> dict:
    """The settings that change a stored value: not output, executor or revisions (adding
    checkpoints is compatible), nor the knobs of a test that is not used; the internal
    states stored and the LLC's settings when the LLC is one of them."""
    d = cfg.model_dump(mode="json")
    sub = {k: d[k] for k in HASHED}
    sub["model"] = {k: v for k, v in sub["model"].items() if k != "revisions"}
    sub["stats"] = cfg.stats.effective()
    if sub["rois"].get("space") == "auto":  # the default: stores made before rois.space keep their hash
        sub["rois"].pop("space")
    # features.word_state was called word_reduction: stores made before the rename keep their hash
    sub["features"] = {("word_reduction" if k == "word_state" else k): v for k, v in sub["features"].items()}
    if cfg.internal_states:  # only when asked for: stores made before internal_states keep their hash
        sub["internal_states"] = sorted(cfg.internal_states)
        if "llc" in cfg.internal_states:
            sub["llc"] = d["llc"]
    if sub["features"].get("float16"):
        # float16 reaches the feature cache since it was renamed here: a store made before (whose features were
        # float32 whatever it said) does not share this hash
        sub["features"]["cache_dtype"] = "float16"
    return sub


def config_hash(cfg: RunConfig) -> str:
    """Hash of :func:`settings`: two runs whose hashes differ must not write into one store."""
    return hashlib.sha256(json.dumps(settings(cfg), sort_keys=True).encode()).hexdigest()[:16]


def settings_diff(old: RunConfig, new: RunConfig) -> list[str]:
    """``key: old -> new`` for each setting that differs between two configs."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
        return out

    def named(d: dict) -> dict:  # the config's names, not the hash's
        return {("features.word_state" if k == "features.word_reduction" else k): v for k, v in d.items()
                if k != "features.cache_dtype"}

    a, b = named(flat(settings(old))), named(flat(settings(new)))
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
