"""Downstream-task results per checkpoint (lm-evaluation-harness JSON or a CSV) on
the training axis, and the co-occurrence of transitions across curves."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataNotFoundError, ValidationError

log = logging.getLogger(__name__)

__all__ = ["read_lm_eval", "read_downstream_csv", "downstream_curves", "cooccurrence", "transition_kind", "nearest_transitions"]

_COLUMNS = ["checkpoint", "task", "metric", "value", "stderr", "step", "tokens", "source"]


def _model_arg(model_args: Any, key: str) -> str | None:
    """``key`` from lm-eval's ``model_args`` (a "k=v,k=v" string or a dict)."""
    if isinstance(model_args, Mapping):
        v = model_args.get(key)
        return None if v is None else str(v)
    if isinstance(model_args, str):
        for part in model_args.split(","):
            k, _, v = part.partition("=")
            if k.strip() == key:
                return v.strip()
    return None


_CHECKPOINT_NAME = re.compile(r"^(?:checkpoint-\d+|step\d+|ckpt_\d+)$")


def _revision_from_args(model_args: Any) -> str | None:
    """The checkpoint of lm-eval's ``model_args``: its ``revision``, else the folder name of
    a ``pretrained`` path that names a checkpoint (``/runs/tiny/checkpoint-200``)."""
    rev = _model_arg(model_args, "revision")
    if rev is not None:
        return rev
    pretrained = _model_arg(model_args, "pretrained")
    if pretrained:
        name = pretrained.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
        if _CHECKPOINT_NAME.match(name):
            return name
    return None


def _training_axis(name: str, tokens: Mapping[str, Any] | Callable | None, tokens_per_step: float | None) -> tuple[float, float]:
    """(step, tokens) of a checkpoint name: a user mapping (name -> tokens, or name ->
    {"step", "tokens"}) first, else brainalign.features' revision parser."""
    if callable(tokens):
        v = tokens(name)
    elif tokens is not None:
        v = tokens.get(name)
    else:
        v = None
    if isinstance(v, Mapping):
        return float(v.get("step") if v.get("step") is not None else np.nan), float(v.get("tokens") if v.get("tokens") is not None else np.nan)
    if v is not None:
        return np.nan, float(v)
    try:
        from ..features.revisions import parse_revision
    except ImportError:  # pragma: no cover - features not installed
        parse_revision = None
    if parse_revision is not None:
        info = parse_revision(name, tokens_per_step=tokens_per_step)
        step, tok = info.get("step"), info.get("tokens")
        return (np.nan if step is None else float(step)), (np.nan if tok is None else float(tok))
    m = re.search(r"(?:step|checkpoint-)(\d+)", name)
    if m:
        step = float(m.group(1))
        return step, step * tokens_per_step if tokens_per_step else np.nan
    return np.nan, np.nan


def _iter_files(paths: str | os.PathLike | Iterable) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.json")))
        elif p.is_file():
            files.append(p)
        else:
            raise DataNotFoundError(f"lm-evaluation-harness result {p} does not exist")
    if not files:
        raise DataNotFoundError(f"no .json result files found in {list(map(str, paths))}")
    return files


def read_lm_eval(
    paths: str | os.PathLike | Iterable,
    tokens: Mapping[str, Any] | Callable | None = None,
    tokens_per_step: float | None = None,
    checkpoint: Mapping[str, str] | None = None,
):
    """Read lm-evaluation-harness output files into a long table.

    Both formats are read: the current one (``results[task]["acc,none"]`` with
    ``"acc_stderr,none"``, metrics named ``metric,filter``) and the older one
    (``results[task]["acc"]``, ``"acc_stderr"``).  The checkpoint is the ``revision``
    in ``config.model_args`` (a "pretrained=...,revision=step1000" string or a dict),
    else ``checkpoint[file name]``, else the file's stem.

    Parameters
    ----------
    paths : path, folder or list of them
        Result JSON files (folders are searched recursively).
    tokens : mapping or callable, optional
        Checkpoint name -> tokens (or -> {"step", "tokens"}); else the name is parsed
        (``step1000``, ``checkpoint-200``, OLMo ``...-tokens4B``...).
    tokens_per_step : float, optional
        Passed to the revision parser.

    Returns
    -------
    pandas.DataFrame
        Columns checkpoint, task, metric, value, stderr, step, tokens, source.
    """
    import pandas as pd

    rows = []
    for f in _iter_files(paths):
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValidationError(f"lm-evaluation-harness result {f} is not valid JSON: {exc}") from exc
        if not isinstance(data, Mapping) or not isinstance(data.get("results"), Mapping):
            raise ValidationError(f"{f} has no 'results' dict; is it an lm-evaluation-harness output file?")
        cfg = data.get("config") or {}
        name = _revision_from_args(cfg.get("model_args")) if isinstance(cfg, Mapping) else None
        if name is None and checkpoint is not None:
            name = checkpoint.get(f.name) or checkpoint.get(str(f))
        if name is None:
            name = f.stem
            log.info("%s: no revision in config.model_args; using the file name %r as checkpoint", f, name)
        step, tok = _training_axis(name, tokens, tokens_per_step)
        n_rows = len(rows)
        for task, res in data["results"].items():
            if not isinstance(res, Mapping):
                continue
            for key, value in res.items():
                metric, _, filt = key.partition(",")
                if "_stderr" in metric or metric == "alias":
                    continue
                value = _number(value)
                if value is None:
                    continue
                if isinstance(value, str):
                    raise ValidationError(f"{f}: task {task!r}, metric {key!r}: value {value!r} is not a number")
                se_key = f"{metric}_stderr,{filt}" if filt else f"{metric}_stderr"
                se = _number(res.get(se_key))
                label = metric if filt in ("", "none") else f"{metric},{filt}"
                rows.append({
                    "checkpoint": name, "task": task, "metric": label, "value": value,
                    "stderr": se if isinstance(se, float) else np.nan,  # lm-eval writes "N/A" when unknown
                    "step": step, "tokens": tok, "source": str(f),
                })
        if len(rows) == n_rows:
            raise ValidationError(
                f"lm-evaluation-harness result {f} holds no metric values "
                f"('results' is {'empty' if not data['results'] else 'without numbers'})"
            )
    return pd.DataFrame(rows, columns=_COLUMNS)


def _number(value: Any) -> float | str | None:
    """A metric value as a float; a string that is no number as is; None for anything else
    (booleans, lists, nested dicts, null)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return None


def read_downstream_csv(
    path: str | os.PathLike,
    tokens: Mapping[str, Any] | Callable | None = None,
    tokens_per_step: float | None = None,
):
    """Read a CSV with columns checkpoint, task, metric, value (optional stderr,
    step, tokens) into the same long table as :func:`read_lm_eval`."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"downstream CSV {p} does not exist")
    df = pd.read_csv(p)
    missing = {"checkpoint", "task", "metric", "value"} - set(df.columns)
    if missing:
        raise ValidationError(f"downstream CSV {p} lacks column(s) {sorted(missing)} (has {list(df.columns)})")
    df["checkpoint"] = df["checkpoint"].astype(str)
    if not np.issubdtype(df["value"].dtype, np.number):
        raise ValidationError(f"downstream CSV {p}: column 'value' is not numeric")
    if "stderr" not in df:
        df["stderr"] = np.nan
    axis = {c: _training_axis(c, tokens, tokens_per_step) for c in df["checkpoint"].unique()}
    for col, i in (("step", 0), ("tokens", 1)):
        parsed = df["checkpoint"].map(lambda c: axis[c][i])
        df[col] = df[col].fillna(parsed) if col in df else parsed
    df["source"] = str(p)
    return df[_COLUMNS]


def downstream_curves(table, metric: str | Mapping[str, str] = "acc"):
    """Curves over training from a long table (:func:`read_lm_eval`).

    Returns a DataArray (task, checkpoint) of ``metric`` (one name, or a mapping
    task -> metric), checkpoints sorted by tokens, with ``tokens`` and ``step``
    coordinates on checkpoint and a ``stderr`` coordinate (task, checkpoint); NaN
    where a task was not run at a checkpoint.  ``detect_phases(curves.sel(task=t))``
    segments one task.
    """
    import xarray as xr

    if isinstance(metric, str):
        sel = table[table["metric"] == metric]
    else:
        sel = table[[metric.get(t) == m for t, m in zip(table["task"], table["metric"])]]
    if sel.empty:
        raise ValidationError(f"no rows with metric {metric!r} (metrics: {sorted(table['metric'].unique())})")
    dup = sel.duplicated(["task", "checkpoint"])
    if dup.any():
        raise ValidationError(f"several values for the same task and checkpoint: {sel[dup][['task', 'checkpoint']].values.tolist()[:3]}")
    ck = sel.drop_duplicates("checkpoint").sort_values(["tokens", "step", "checkpoint"], na_position="last")
    value = sel.pivot(index="task", columns="checkpoint", values="value")[list(ck["checkpoint"])]
    se = sel.pivot(index="task", columns="checkpoint", values="stderr")[list(ck["checkpoint"])]
    return xr.DataArray(
        value.values,
        dims=("task", "checkpoint"),
        coords={
            "task": list(value.index),
            "checkpoint": list(ck["checkpoint"]),
            "tokens": ("checkpoint", ck["tokens"].to_numpy(float)),
            "step": ("checkpoint", ck["step"].to_numpy(float)),
            "stderr": (("task", "checkpoint"), se.values),
        },
        name=metric if isinstance(metric, str) else "value",
    )


def cooccurrence(brain: Any, others: Mapping[str, Any], **detect_kwargs: Any):
    """For each transition of the brain-alignment curve, the nearest transition of each
    other curve (internal states, downstream tasks), with distances in log10 tokens.

    Parameters
    ----------
    brain : PhaseResult, or a curve accepted by :func:`detect_phases`
        Several brain curves: a mapping name -> PhaseResult/curve.
    others : mapping name -> PhaseResult or curve
        Curves are segmented with ``detect_phases(curve, **detect_kwargs)``.

    Returns
    -------
    pandas.DataFrame
        One row per (brain curve, brain transition, other curve): ``brain_tokens``,
        its interval, ``other_tokens`` (NaN when the other curve has no transition),
        ``distance_log10`` (other minus brain), ``abs_distance_log10``, and
        ``within_interval`` (the other transition falls inside the brain one's
        bootstrap interval).
    """
    import pandas as pd

    from .phases import PhaseResult, detect_phases

    def as_result(c: Any, name: str) -> PhaseResult:
        if isinstance(c, PhaseResult):
            return c
        return detect_phases(c, name=name, **detect_kwargs)

    brains = brain if isinstance(brain, Mapping) else {getattr(brain, "name", None) or "brain": brain}
    brains = {k: as_result(v, k) for k, v in brains.items()}
    other_res = {k: as_result(v, k) for k, v in others.items()}
    for res in [*brains.values(), *other_res.values()]:
        if not res.log_x:
            raise ValidationError("cooccurrence(): curves must be segmented on a log axis (log_x=True)")
    rows = []
    for bname, b in brains.items():
        for i, bp in enumerate(b.log_breakpoints):
            lo, hi = b.log_intervals[i]
            for oname, o in other_res.items():
                row = {
                    "brain_curve": bname, "transition": i + 1, "brain_tokens": 10**bp,
                    "brain_lo": 10**lo, "brain_hi": 10**hi, "brain_change": b.transitions[i].label,
                    "curve": oname, "other_tokens": np.nan, "other_change": None,
                    "distance_log10": np.nan, "abs_distance_log10": np.nan, "within_interval": False,
                }
                if len(o.log_breakpoints):
                    j = int(np.argmin(np.abs(o.log_breakpoints - bp)))
                    d = float(o.log_breakpoints[j] - bp)
                    row.update(
                        other_tokens=float(10 ** o.log_breakpoints[j]),
                        other_change=o.transitions[j].label,
                        distance_log10=d, abs_distance_log10=abs(d),
                        within_interval=bool(np.isfinite(lo) and lo <= o.log_breakpoints[j] <= hi),
                    )
                rows.append(row)
    cols = ["brain_curve", "transition", "brain_tokens", "brain_lo", "brain_hi", "brain_change", "curve",
            "other_tokens", "other_change", "distance_log10", "abs_distance_log10", "within_interval"]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["brain_curve", "transition", "abs_distance_log10"], na_position="last").reset_index(drop=True)


def transition_kind(t: Any) -> str:
    """``"rise"`` or ``"fall"`` for a transition into a rising or falling phase (a step: its
    direction), ``"plateau"`` for one into a flat phase."""
    if t.kind == "step":
        return "rise" if (t.direction == "rising" or (not t.direction and t.change > 0)) else "fall"
    return {"rising": "rise", "falling": "fall"}.get(t.after, "plateau")


NEAREST_COLUMNS = ["roi", "transition", "change", "tokens", "tokens_lo", "tokens_hi"]


def nearest_transitions(brain: Mapping[str, Any], groups: Mapping[str, Mapping[str, Any]]):
    """One row per transition of each brain curve, with the nearest transition of each group of curves.

    Parameters
    ----------
    brain : mapping name -> PhaseResult
        Brain-alignment phases (e.g. per ROI); results with ``significant=False`` or
        no transitions give no rows.
    groups : mapping group -> (mapping curve name -> PhaseResult)
        E.g. ``{"state": internal-state phases, "downstream": task phases}``.

    Returns
    -------
    pandas.DataFrame
        Columns ``roi``, ``transition`` (``rise``/``fall``/``plateau``), ``change`` (the
        phases around it), ``tokens`` and its interval ``tokens_lo``/``tokens_hi``; per
        group ``<group>`` (the nearest curve's name, None when no curve of the group has
        a transition), ``<group>_tokens``, ``<group>_distance_log10`` (its log10 tokens
        minus the brain transition's) and ``<group>_change``. Log-axis results only.
    """
    import pandas as pd

    def points(results: Mapping[str, Any]) -> list[tuple[str, float, Any]]:
        out = []
        for name, r in results.items():
            if not r.log_x:
                raise ValidationError(f"nearest_transitions(): {name!r} was not segmented on a log axis")
            out += [(name, float(t.log_at), t) for t in r.transitions]
        return out

    others = {g: points(res) for g, res in groups.items()}
    rows = []
    for roi, b in brain.items():
        if b.significant is False or not b.log_x:
            continue
        for t in b.transitions:
            lo, hi = t.interval
            row = {"roi": roi, "transition": transition_kind(t), "change": t.label, "tokens": float(t.at),
                   "tokens_lo": lo, "tokens_hi": hi}
            for g, pts in others.items():
                row.update({g: None, f"{g}_tokens": np.nan, f"{g}_distance_log10": np.nan, f"{g}_change": None})
                if pts:
                    name, at, o = min(pts, key=lambda p: abs(p[1] - t.log_at))
                    row.update({g: name, f"{g}_tokens": float(10**at), f"{g}_distance_log10": at - float(t.log_at),
                                f"{g}_change": o.label})
            rows.append(row)
    cols = NEAREST_COLUMNS + [c for g in groups for c in (g, f"{g}_tokens", f"{g}_distance_log10", f"{g}_change")]
    return pd.DataFrame(rows, columns=cols)
