"""Checkpoint names -> a training axis (``step``, ``tokens``), and listing checkpoints.

Recognised names (searched anywhere in the revision string or folder name):

* Pythia ``step{N}`` -- ``tokens = N * 2,097,152`` (1024 sequences x 2048 tokens per
  step, Biderman et al. 2023). A bare ``step{N}`` is read with Pythia's batch unless
  ``tokens_per_step`` says otherwise.
* OLMo ``step{N}-tokens{M}B`` (also ``stage1-step{N}-tokens{M}B``) -- ``tokens = M * 1e9``.
* LLM360 Amber ``ckpt_{NNN}`` -- 360 checkpoints evenly spaced over ~1.26 T tokens; we
  assume ``ckpt_i`` was saved after ``i + 1`` data chunks of :data:`AMBER_TOKENS_PER_CKPT`
  (3.5 B) tokens each, so ``tokens = (i + 1) * 3.5e9``. Override with ``tokens_per_step``
  (then ``tokens = (i + 1) * tokens_per_step``).
* Hugging Face Trainer ``checkpoint-{N}`` -- ``step = N``; ``tokens = N * tokens_per_step``
  when ``tokens_per_step`` is given, else unknown.
* anything else: a user mapping ``{revision: {"step": ..., "tokens": ...}}`` (or a
  callable ``revision -> dict``), else ``{"step": None, "tokens": None}``.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import DataNotFoundError, ValidationError
from .loading import _offline

__all__ = [
    "PYTHIA_TOKENS_PER_STEP",
    "AMBER_TOKENS_PER_CKPT",
    "parse_revision",
    "list_revisions",
    "training_sort_key",
]

log = logging.getLogger(__name__)

#: Pythia: 1024 sequences of 2048 tokens per optimizer step.
PYTHIA_TOKENS_PER_STEP = 1024 * 2048
#: LLM360 Amber: ~1.26 T tokens over 360 checkpoints (assumption, see module docstring).
AMBER_TOKENS_PER_CKPT = 3.5e9

_OLMO = re.compile(r"step(\d+)-tokens(\d+(?:\.\d+)?)([KMBT]?)", re.IGNORECASE)
_AMBER = re.compile(r"(?:^|[^a-z])ckpt_(\d+)$", re.IGNORECASE)
_TRAINER = re.compile(r"(?:^|[^a-z])checkpoint-(\d+)$", re.IGNORECASE)
_STEP = re.compile(r"(?:^|[^a-z])step[_-]?(\d+)$", re.IGNORECASE)
_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}

Training = dict  # {"step": int | None, "tokens": float | None}


def parse_revision(
    revision: str | os.PathLike | None,
    *,
    tokens_per_step: float | None = None,
    mapping: Mapping[str, Mapping[str, Any]] | Callable[[str], Mapping[str, Any] | None] | None = None,
) -> Training:
    """The training axis of a checkpoint from its name.

    Parameters
    ----------
    revision : str, path or None
        Hub revision (``"step1000"``), or a checkpoint folder (only its name is read).
    tokens_per_step : float, optional
        Overrides the tokens-per-step assumption of ``step{N}``, ``ckpt_{N}`` and
        ``checkpoint-{N}`` names.
    mapping : mapping or callable, optional
        User-supplied ``revision -> {"step": int, "tokens": float}``; wins over the parsers.

    Returns
    -------
    dict
        ``{"step": int | None, "tokens": float | None}``.
    """
    out: Training = {"step": None, "tokens": None}
    if revision is None:
        return out
    name = Path(str(revision)).name if os.sep in str(revision) or "/" in str(revision) else str(revision)
    if mapping is not None:
        got = mapping(str(revision)) if callable(mapping) else (mapping.get(str(revision)) or mapping.get(name))
        if got is not None:
            if not isinstance(got, Mapping):
                raise ValidationError(f"revision mapping for {revision!r} must be a dict with step/tokens, got {got!r}")
            unknown = set(got) - {"step", "tokens"}
            if unknown:
                raise ValidationError(f"revision mapping for {revision!r} has unknown keys {sorted(unknown)}")
            step, tokens = got.get("step"), got.get("tokens")
            return {
                "step": None if step is None else int(step),
                "tokens": None if tokens is None else float(tokens),
            }
    if tokens_per_step is not None and (not isinstance(tokens_per_step, (int, float)) or tokens_per_step <= 0):
        raise ValidationError(f"tokens_per_step must be a positive number, got {tokens_per_step!r}")
    m = _OLMO.search(name)
    if m:
        return {"step": int(m.group(1)), "tokens": float(m.group(2)) * _UNITS[m.group(3).upper()]}
    m = _AMBER.search(name)
    if m:
        i = int(m.group(1))
        return {"step": i, "tokens": (i + 1) * float(tokens_per_step or AMBER_TOKENS_PER_CKPT)}
    m = _TRAINER.search(name)
    if m:
        n = int(m.group(1))
        return {"step": n, "tokens": None if tokens_per_step is None else n * float(tokens_per_step)}
    m = _STEP.search(name)
    if m:
        n = int(m.group(1))
        return {"step": n, "tokens": n * float(tokens_per_step or PYTHIA_TOKENS_PER_STEP)}
    return out


def training_sort_key(revision: str, **kwargs: Any) -> tuple:
    """Sort key ordering checkpoints by training progress (unparsed names last, by name)."""
    t = parse_revision(revision, **kwargs)
    tokens = t["tokens"] if t["tokens"] is not None else float("inf")
    step = t["step"] if t["step"] is not None else float("inf")
    return (tokens, step, str(revision))


def _is_model_dir(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file()


def _hub_cache_repo(model: str, hf_cache_dir: str | os.PathLike | None) -> Path:
    from huggingface_hub import constants

    root = Path(hf_cache_dir) if hf_cache_dir is not None else Path(constants.HF_HUB_CACHE)
    return root / ("models--" + model.replace("/", "--"))


def list_revisions(
    model: str | os.PathLike,
    *,
    hf_cache_dir: str | os.PathLike | None = None,
    local_only: bool | None = None,
    tokens_per_step: float | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[str]:
    """Checkpoints of ``model``, ordered by training progress.

    * a local folder holding checkpoint sub-folders (each with a ``config.json``): their
      names (``checkpoint-100``, ``step1000``...);
    * a hub model id: its branches and tags from the hub API, or, offline
      (``HF_HUB_OFFLINE=1``, ``local_only=True``, or the hub unreachable), the refs in the
      local Hugging Face cache (``models--org--name/refs/``).

    Parameters
    ----------
    model : str or path
    hf_cache_dir : path, optional
        Hugging Face hub cache (default: ``HF_HUB_CACHE``).
    local_only : bool, optional
        Never ask the hub (default: follow ``HF_HUB_OFFLINE``).
    tokens_per_step : float, optional
        Passed to :func:`parse_revision` for ordering.
    cache_dir : path, optional
        Deprecated name of ``hf_cache_dir`` (a DeprecationWarning).
    """
    if cache_dir is not None:
        warnings.warn("list_revisions(cache_dir=) is deprecated; use hf_cache_dir=", DeprecationWarning, stacklevel=2)
        if hf_cache_dir is not None and Path(hf_cache_dir) != Path(cache_dir):
            raise ValidationError("give hf_cache_dir= (or the deprecated cache_dir=), not two different folders")
        hf_cache_dir = cache_dir
    key = lambda r: training_sort_key(r, tokens_per_step=tokens_per_step)  # noqa: E731
    p = Path(str(model)).expanduser()
    if p.is_dir():
        subs = [c.name for c in p.iterdir() if _is_model_dir(c)]
        if not subs:
            if _is_model_dir(p):
                return []
            raise DataNotFoundError(f"model folder {p} holds no checkpoint folders (sub-folders with a config.json)")
        return sorted(subs, key=key)
    model = str(model)
    if "/" not in model and not model.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValidationError(f"model {model!r} is neither a folder nor a hub id (org/name)")
    if local_only is None:
        local_only = _offline()
    if not local_only:
        try:
            from huggingface_hub import HfApi

            refs = HfApi().list_repo_refs(model)
            names = [b.name for b in refs.branches] + [t.name for t in refs.tags]
            return sorted(set(names), key=key)
        except Exception as exc:  # network, auth, missing repo: fall back to the cache
            log.warning("hub listing of %s failed (%s); using the local cache", model, exc)
    refs_dir = _hub_cache_repo(model, hf_cache_dir) / "refs"
    if not refs_dir.is_dir():
        raise DataNotFoundError(
            f"model {model!r} is not in the local Hugging Face cache ({refs_dir} missing) and the hub "
            "was not asked (offline); download it first, e.g. huggingface-cli download "
            f"{model} --revision <rev>"
        )
    names = [str(f.relative_to(refs_dir)) for f in refs_dir.rglob("*") if f.is_file()]
    return sorted(names, key=key)
