"""Internal-state metrics a sweep computes for every checkpoint and keeps in its results
store (the run config's ``internal_states: [llc, memorisation, weight_norm]``).

The metrics computed at analysis time from the feature cache (CKA, dimensionality, head
scores; :func:`brainalign.sweep.analyze.internal_state_curves`) are cheap to redo; these
are not (the LLC runs SGLD chains) or come from files a store may outlive (training
logs), so a sweep stores them beside its scores, one checkpoint at a time.

A metric is a :class:`StateMetric` in :data:`STATE_METRICS`: the store variables it
writes (name -> dims beyond ``checkpoint``, dtype), the sizes of its own axes, a check
run before any work (:func:`check_states`) and ``compute(ctx)`` returning its variables'
values for one checkpoint (a :class:`CheckpointContext`). Adding a metric is a function
and one registry line.

Built in:

- ``llc``: the local learning coefficient (:mod:`brainalign.dynamics.llc`, the
  ``brainalign[devinterp]`` extra) of causal LMs, with its chain diagnostics (``llc_chain``,
  ``llc_trace`` over ``chain`` x ``draw``, ``llc_settled``, ``llc_init_loss``). Its data:
  for a model trained by ``brainalign train-tiny --task``, the task's training data and
  loss (rebuilt from ``training_log.json``); for other models, windows of the stimulus
  stories' tokens (next-token loss).
- ``memorisation``: training and held-out loss and accuracy and their gaps, from the
  ``training_log.json`` of ``train-tiny`` models (accuracies only for task models).
- ``weight_norm``: the L2 norm of all the model's parameters.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ValidationError

log = logging.getLogger(__name__)

__all__ = ["StateMetric", "CheckpointContext", "STATE_METRICS", "state_variables", "state_axes", "check_states",
           "compute_states", "llc_settings", "llc_data", "loads_model", "curve_variables"]

Variables = dict[str, tuple[tuple[str, ...], str]]


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No transformers "Loading weights" bar per checkpoint (a sweep shows its own progress)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


@dataclass
class CheckpointContext:
    """What a metric may read of one checkpoint: its folder or hub id and revision, the
    stimulus stories' texts, the run config's settings of each metric (``settings["llc"]``)
    and the models, loaded once and shared between metrics. ``hf_cache_dir``: the Hugging
    Face cache hub revisions are read from (the sweep's ``weights.mirror`` setting)."""

    model: str
    revision: str | None
    trust_remote_code: bool = False
    texts: list[str] = field(default_factory=list)
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: where the causal LM runs ("auto": CUDA when there is one); float32 everywhere
    device: str = "cpu"
    hf_cache_dir: str | None = None
    _loaded: dict = field(default_factory=dict, repr=False)

    @property
    def where(self) -> str:
        return self.model if self.revision is None else f"{self.model}@{self.revision}"

    def source(self):
        """The resolved checkpoint (:func:`brainalign.features.loading.resolve_source`)."""
        if "src" not in self._loaded:
            from ..features.loading import resolve_source

            self._loaded["src"] = resolve_source(self.model, self.revision, self.hf_cache_dir)
        return self._loaded["src"]

    def _from_pretrained(self, cls, **kw):
        src = self.source()
        try:
            with _quiet_loading():
                return cls.from_pretrained(src.load_from, revision=src.load_revision, trust_remote_code=self.trust_remote_code,
                                           cache_dir=None if src.local else self.hf_cache_dir, **kw)
        except (OSError, ValueError) as exc:
            raise ValidationError(f"internal states: cannot load {self.where}: {exc}") from None

    def causal_lm(self):
        """The checkpoint as a causal LM (safetensors weights, float32, on ``device``), loaded once."""
        if "lm" not in self._loaded:
            from transformers import AutoModelForCausalLM

            from ..features.loading import resolve_device

            lm = self._from_pretrained(AutoModelForCausalLM, use_safetensors=True, dtype="float32").eval()
            self._loaded["lm"] = lm.to(resolve_device(self.device, "float32")[0])
        return self._loaded["lm"]

    def module(self):
        """The checkpoint's model: the causal LM when it is one, else its base model."""
        if "lm" in self._loaded:
            return self._loaded["lm"]
        if self.is_causal():
            return self.causal_lm()
        if "base" not in self._loaded:
            from transformers import AutoModel

            self._loaded["base"] = self._from_pretrained(AutoModel, use_safetensors=True).eval()
        return self._loaded["base"]

    def is_causal(self) -> bool:
        if "causal" not in self._loaded:
            from transformers import AutoConfig

            from ..features.loading import model_kind

            conf = self._from_pretrained(AutoConfig)
            self._loaded["causal"] = model_kind(conf) == "causal"
        return self._loaded["causal"]

    def tokenizer(self):
        """The checkpoint's tokenizer (for a Trainer-style ``run/checkpoint-N`` folder without
        one, the run folder's)."""
        if "tok" not in self._loaded:
            from transformers import AutoTokenizer

            from ..features.loading import tokenizer_folder

            src = self.source()
            try:
                self._loaded["tok"] = AutoTokenizer.from_pretrained(
                    tokenizer_folder(src), revision=src.load_revision, trust_remote_code=self.trust_remote_code,
                    cache_dir=None if src.local else self.hf_cache_dir)
            except (OSError, ValueError) as exc:
                raise ValidationError(f"internal states: cannot load the tokenizer of {self.where}: {exc}") from None
        return self._loaded["tok"]

    def training_log(self) -> tuple[dict | None, dict | None]:
        """(the train-tiny log of this checkpoint's run, this checkpoint's record in it);
        (None, None) for hub revisions and folders without a log."""
        if "log" not in self._loaded:
            from .memorisation import find_training_log, read_training_log

            local = Path(self.model).expanduser().is_dir()  # a hub id has no log (and needs no commit lookup)
            folder = Path(self.source().load_from) if local else None
            path = find_training_log(folder) if folder is not None else None
            data = read_training_log(path) if path is not None else None
            rec = next((r for r in data["checkpoints"] if r["name"] == folder.name), None) if data else None
            self._loaded["log"] = (data, rec)
        return self._loaded["log"]


@dataclass(frozen=True)
class StateMetric:
    """One internal-state metric a sweep stores (see the module docstring).

    ``variables``: store variable -> (dims beyond ``checkpoint``, dtype); a dim is
    ``layer`` (values for the sweep's layers, in the plan's order) or one of the metric's
    own axes, whose lengths ``axes(settings)`` gives. ``curves``: the variables that are
    curves over training (phase-detected, in the report; default: every variable with no
    dims). ``loads_model``: whether ``compute`` reads the weights (a sweep then fetches
    them first, and refuses ``executor.stages: separate``)."""

    name: str
    variables: Variables
    compute: Callable[[CheckpointContext], dict[str, Any]]
    axes: Callable[[Mapping[str, Any]], dict[str, int]] = lambda settings: {}
    #: called before any work with the checkpoints' contexts (the last checkpoint's first); raises ValidationError
    check: Callable[[list[CheckpointContext]], None] | None = None
    description: str = ""
    curves: tuple[str, ...] | None = None
    loads_model: bool = True

    def curve_variables(self) -> list[str]:
        return list(self.curves) if self.curves is not None else [v for v, (dims, _) in self.variables.items() if not dims]


# -- weight norm ---------------------------------------------------------------------------
def _weight_norm(ctx: CheckpointContext) -> dict[str, Any]:
    import torch

    with torch.no_grad():
        sq = sum(float((p.detach().double() ** 2).sum()) for p in ctx.module().parameters())
    return {"weight_norm": float(np.sqrt(sq))}


# -- memorisation --------------------------------------------------------------------------
#: the training log's curves the memorisation state stores (the weight norm is a state of its own)
_MEMORISATION = ("train_loss", "heldout_loss", "memorisation_gap", "train_acc", "heldout_acc", "memorisation")


def _memorisation(ctx: CheckpointContext) -> dict[str, Any]:
    from .memorisation import record_curves

    vals = record_curves(ctx.training_log()[1])
    return {var: vals[var] for var in _MEMORISATION}


def _check_memorisation(ctxs: list[CheckpointContext]) -> None:
    if not any(c.training_log()[0] is not None for c in ctxs):
        raise ValidationError(f"internal_states: memorisation reads the training_log.json that brainalign train-tiny "
                              f"writes beside its checkpoints; {ctxs[0].where} has none (drop memorisation, or sweep "
                              "a train-tiny run)")


# -- LLC -----------------------------------------------------------------------------------
#: the ``llc:`` settings that are not :class:`~brainalign.dynamics.llc.LLCSettings`
LLC_DATA_KEYS = ("sequences", "seq_len")


def llc_settings(settings: Mapping[str, Any]):
    """The :class:`~brainalign.dynamics.llc.LLCSettings` of a run config's ``llc:`` section."""
    from .llc import LLCSettings

    return LLCSettings(**{k: v for k, v in dict(settings).items() if k not in LLC_DATA_KEYS})


def _task_of(log_data: dict | None):
    """The synthetic task a train-tiny run was trained on, or None (a corpus run)."""
    from ..training.tasks import TASKS

    spec = dict(((log_data or {}).get("config") or {}).get("task") or {})
    kind = spec.pop("kind", None)
    if kind is None:
        return None
    if kind not in TASKS:
        raise ValidationError(f"training log: unknown task {kind!r}; known: {', '.join(TASKS)}")
    return TASKS[kind](**spec)


def llc_data(ctx: CheckpointContext) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(sequences, loss positions or None, what they are) the LLC of a checkpoint is measured on."""
    s = dict(ctx.settings.get("llc") or {})
    data, _ = ctx.training_log()
    task = _task_of(data)
    if task is not None:
        x = task.data(int(data["config"].get("seed", 0)))["train_eval"][0]
        x = x[: int(s.get("sequences", 256))]
        return np.asarray(x, dtype=np.int64), task.loss_mask(x)[0], f"the {task.name} task's training data ({task.loss})"
    seq_len, n = int(s.get("seq_len", 64)), int(s.get("sequences", 256))
    tok = ctx.tokenizer()
    stream: list[int] = []
    for t in ctx.texts:
        stream.extend(tok(t, add_special_tokens=False, verbose=False)["input_ids"])
    k = min(n, len(stream) // seq_len)
    if k < 1:
        raise ValidationError(f"internal_states: llc: the stimulus stories give {len(stream)} tokens, fewer than one "
                              f"window of llc.seq_len={seq_len}")
    x = np.asarray(stream[: k * seq_len], dtype=np.int64).reshape(k, seq_len)
    return x, None, f"{k} windows of {seq_len} tokens of the stimulus stories (next-token loss)"


def _llc(ctx: CheckpointContext) -> dict[str, Any]:
    """The LLC of the checkpoint (see :func:`llc_data` for what it is measured on)."""
    from .llc import estimate_llc

    x, positions, _ = llc_data(ctx)
    est = estimate_llc(ctx.causal_lm(), x, llc_settings(ctx.settings.get("llc") or {}), loss_positions=positions)
    if not bool(est["settled"].all()):
        n = est.sizes["chain"]
        log.warning("LLC of %s: %d of %d chain%s did not settle (the loss traces are in llc_trace)", ctx.where,
                    int((~est["settled"]).sum()), n, "s" if n != 1 else "")
    return {"llc": float(est["llc"]), "llc_std": float(est["llc_std"]), "llc_init_loss": float(est["init_loss"]),
            "llc_chain": est["llc_chain"].values, "llc_settled": est["settled"].values,
            "llc_trace": est["loss_trace"].values}


def _check_llc(ctxs: list[CheckpointContext]) -> None:
    from .llc import require_devinterp

    try:
        require_devinterp()
    except ImportError as exc:
        raise ValidationError(f"internal_states: llc: {exc}") from None
    ctx = ctxs[0]
    s = llc_settings(ctx.settings.get("llc") or {})  # raises on bad settings
    if not ctx.is_causal():
        raise ValidationError(f"internal_states: llc needs a causal language model (its loss is the next-token "
                              f"loss); {ctx.where} is not one")
    if s.restrict:
        from devinterp.slt.weight_restrictions import create_param_masks

        try:
            create_param_masks(ctx.causal_lm(), s.restrict)
        except (ValueError, KeyError) as exc:
            raise ValidationError(f"llc.restrict: {s.restrict!r}: {exc}") from None
    n = int((ctx.settings.get("llc") or {}).get("batch_size", 32))
    x, _, what = llc_data(ctx)
    if len(x) < n:
        raise ValidationError(f"internal_states: llc: {what}: {len(x)} sequences, fewer than llc.batch_size={n}")


def _llc_axes(settings: Mapping[str, Any]) -> dict[str, int]:
    s = llc_settings(settings.get("llc") or {})
    return {"chain": int(s.chains), "draw": int(s.draws)}


#: name -> metric (the names ``internal_states:`` takes)
STATE_METRICS: dict[str, StateMetric] = {
    "llc": StateMetric(
        "llc",
        {"llc": ((), "float32"), "llc_std": ((), "float32"), "llc_init_loss": ((), "float32"),
         "llc_chain": (("chain",), "float32"), "llc_settled": (("chain",), "bool"),
         "llc_trace": (("chain", "draw"), "float32")},
        _llc, axes=_llc_axes, check=_check_llc, curves=("llc",),
        description="local learning coefficient (devinterp SGLD) with its chains' loss traces"),
    "memorisation": StateMetric(
        "memorisation", {v: ((), "float32") for v in _MEMORISATION}, _memorisation, check=_check_memorisation,
        loads_model=False,
        description="training and held-out loss and accuracy, and their gaps, from train-tiny's training log"),
    "weight_norm": StateMetric("weight_norm", {"weight_norm": ((), "float32")}, _weight_norm,
                               description="L2 norm of all parameters"),
}


def _metrics(names) -> list[StateMetric]:
    unknown = [n for n in names if n not in STATE_METRICS]
    if unknown:
        raise ValidationError(f"internal_states: unknown {unknown}; known: {', '.join(STATE_METRICS)}")
    return [STATE_METRICS[n] for n in names]


def state_variables(names, reserved=()) -> Variables:
    """The store variables of the metrics ``names``: name -> (dims beyond checkpoint, dtype).
    ``reserved``: names the store already has (a metric may not take one)."""
    out: Variables = {}
    for m in _metrics(names):
        taken = sorted(set(m.variables) & (set(out) | set(reserved)))
        if taken:
            raise ValidationError(f"internal state {m.name!r}: its variables {taken} are already in the store")
        out.update(m.variables)
    return out


def loads_model(names) -> list[str]:
    """The metrics of ``names`` that read the checkpoint's weights."""
    return [m.name for m in _metrics(names) if m.loads_model]


def curve_variables(names) -> list[str]:
    """The stored variables of ``names`` that are curves over training."""
    return [v for m in _metrics(names) for v in m.curve_variables()]


def state_axes(names, settings: Mapping[str, Any]) -> dict[str, int]:
    """The metrics' own axes and their lengths (``chain``, ``draw`` for the LLC)."""
    out: dict[str, int] = {}
    for m in _metrics(names):
        out.update(m.axes(settings))
    return out


def check_states(names, ctxs: list[CheckpointContext]) -> None:
    """Each metric's check (raises a ValidationError naming the metric and the problem)."""
    for m in _metrics(names):
        if m.check is not None:
            m.check(ctxs)


def compute_states(names, ctx: CheckpointContext) -> dict[str, Any]:
    """The metrics' values for one checkpoint: store variable -> value (a number or an array)."""
    out: dict[str, Any] = {}
    for m in _metrics(names):
        vals = m.compute(ctx)
        missing = set(m.variables) - set(vals)
        if missing:
            raise ValidationError(f"internal state {m.name!r} returned no {sorted(missing)}")
        out.update({k: vals[k] for k in m.variables})
    return out
