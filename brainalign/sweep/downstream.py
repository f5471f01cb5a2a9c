"""Downstream-task results (the run config's ``downstream:`` key) on a sweep's checkpoints.

:func:`downstream_table` reads lm-evaluation-harness result files or a CSV (through
:func:`brainalign.dynamics.read_lm_eval` / :func:`~brainalign.dynamics.read_downstream_csv`)
and puts each result on the checkpoint of the sweep it belongs to: matched by name
(the result's revision, or the checkpoint folder named in lm-eval's ``pretrained=``, or
the file name) against each checkpoint's label, revision or folder name, else by step.
A result that matches no checkpoint is an error naming its file.

:func:`downstream_for_plan` is the same for a :class:`~brainalign.sweep.run.Plan` (what
``brainalign run`` stores beside the results); :func:`stored_downstream` reads that copy
back, and :func:`store_downstream` finds the table of a store (its copy, else the files
its config names).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DataNotFoundError, ValidationError
from .config import DownstreamConfig

log = logging.getLogger(__name__)

__all__ = ["read_downstream", "downstream_table", "downstream_for_plan", "stored_downstream", "store_downstream",
           "DOWNSTREAM_GROUP"]

#: the zarr group of a results store that holds its copy of the downstream table
DOWNSTREAM_GROUP = "downstream"
#: the metric of IFEval when the configured one (default ``acc``) is not among its metrics
IFEVAL_METRIC = "prompt_level_strict_acc"


def _as_config(cfg: Any) -> DownstreamConfig:
    if isinstance(cfg, DownstreamConfig):
        return cfg
    try:
        return DownstreamConfig.model_validate(cfg)
    except Exception as exc:  # pydantic's error: say which key
        raise ValidationError(f"downstream: {exc}") from None


def read_downstream(cfg: Any):
    """The long table (checkpoint, task, metric, value, stderr, step, tokens, source) of
    every file ``downstream:`` names: CSVs as :func:`read_downstream_csv`, JSON files and
    folders (their ``.json`` files, and any ``.csv`` in them) as :func:`read_lm_eval`."""
    import pandas as pd

    from ..dynamics.downstream import read_downstream_csv, read_lm_eval

    cfg = _as_config(cfg)
    tps = cfg.tokens_per_step
    frames = []
    for p in cfg.paths():
        if not p.exists():
            raise DataNotFoundError(f"downstream: {p} does not exist")
        if p.is_dir():
            jsons = sorted(p.rglob("*.json"))
            csvs = sorted(p.rglob("*.csv"))
            if not jsons and not csvs:
                raise DataNotFoundError(f"downstream: folder {p} holds no .json or .csv result files")
            if jsons:
                frames.append(read_lm_eval(jsons, tokens_per_step=tps))
            frames += [read_downstream_csv(f, tokens_per_step=tps) for f in csvs]
        elif p.suffix.lower() == ".csv":
            frames.append(read_downstream_csv(p, tokens_per_step=tps))
        else:
            frames.append(read_lm_eval(p, tokens_per_step=tps))
    return pd.concat(frames, ignore_index=True)


def _sweep_checkpoints(checkpoints: Any) -> list[dict]:
    """[{label, names, step, tokens}] of a plan's checkpoints, an xarray object over
    ``checkpoint`` (a store), or a mapping label -> {step, tokens}."""
    out = []
    if isinstance(checkpoints, (xr.Dataset, xr.DataArray)):
        c = checkpoints
        for i, label in enumerate(c.checkpoint.values.tolist()):
            step = float(c["step"].values[i]) if "step" in c.coords else np.nan
            tok = float(c["tokens"].values[i]) if "tokens" in c.coords else np.nan
            out.append({"label": str(label), "names": {str(label)}, "step": step, "tokens": tok})
        return out
    if isinstance(checkpoints, Mapping):
        for label, v in checkpoints.items():
            v = v if isinstance(v, Mapping) else {}
            out.append({"label": str(label), "names": {str(label)}, "step": float(v.get("step", np.nan) or np.nan),
                        "tokens": float(v.get("tokens", np.nan) or np.nan)})
        return out
    for c in checkpoints:
        names = {str(c.label)} | ({str(c.revision)} if c.revision else set())
        if c.revision is None and c.model:
            names.add(Path(str(c.model)).name)
        out.append({"label": str(c.label), "names": names, "step": float(c.step), "tokens": float(c.tokens)})
    return out


def _match(name: str, step: float, ckpts: list[dict]) -> str | None:
    """The label of the sweep checkpoint a result's checkpoint name (and parsed step) is."""
    by_name = [c["label"] for c in ckpts if name in c["names"]]
    if len(by_name) == 1:
        return by_name[0]
    if np.isfinite(step):
        by_step = [c["label"] for c in ckpts if np.isfinite(c["step"]) and c["step"] == step]
        if len(by_step) == 1:
            return by_step[0]
    return None


def _unmatched_error(table, ckpts: list[dict]) -> ValidationError:
    bad = table.drop_duplicates(["source", "checkpoint"])
    files = "; ".join(f"{src} (checkpoint {ck!r})" for src, ck in zip(bad["source"], bad["checkpoint"]))
    shown = ", ".join(c["label"] for c in ckpts[:10]) + (" ..." if len(ckpts) > 10 else "")
    return ValidationError(
        f"downstream: {len(bad)} result(s) match no checkpoint of the sweep: {files}. The sweep's checkpoints: {shown}. "
        "Name the checkpoint in lm-eval's model_args (revision=...), or in the CSV's checkpoint column"
    )


def _task_metric(task: str, metrics: set[str], metric: str | Mapping[str, str]) -> str | None:
    if isinstance(metric, Mapping):
        if task in metric:
            if metric[task] not in metrics:
                raise ValidationError(f"downstream.metric: task {task!r} has no metric {metric[task]!r} "
                                      f"(its metrics: {sorted(metrics)})")
            return metric[task]
        default = metric.get("default", "acc")
    else:
        default = metric
    if default in metrics:
        return default
    if task == "ifeval" and IFEVAL_METRIC in metrics:
        return IFEVAL_METRIC
    return None


def downstream_table(config_downstream: Any, checkpoints: Any) -> xr.Dataset:
    """Downstream results on a sweep's checkpoints.

    Parameters
    ----------
    config_downstream : DownstreamConfig, dict, path or list of paths
        The run config's ``downstream:`` section.
    checkpoints : list of Checkpoint, xarray object over ``checkpoint``, or mapping
        The sweep's checkpoints (a plan's, or a store's with ``step``/``tokens`` coords).

    Returns
    -------
    xarray.Dataset
        Over the sweep's ``checkpoint`` (its order, coords ``tokens``, ``step``): one
        float variable per task (the configured metric; NaN where a checkpoint has no
        result), attributes ``metric``, ``task``, ``role="downstream"``; the Dataset's
        ``sources`` attribute lists the files.

    Raises
    ------
    ValidationError
        Results that match no checkpoint (naming their files), two results for one task
        and checkpoint, or no task with the metric.
    """
    cfg = _as_config(config_downstream)
    table = read_downstream(cfg)
    ckpts = _sweep_checkpoints(checkpoints)
    if not ckpts:
        raise ValidationError("downstream: the sweep has no checkpoints")
    axis = {n: s for n, s in zip(table["checkpoint"], table["step"])}
    where = {n: _match(str(n), float(s), ckpts) for n, s in axis.items()}
    table = table.assign(label=table["checkpoint"].map(where))
    if table["label"].isna().any():
        raise _unmatched_error(table[table["label"].isna()], ckpts)
    labels = [c["label"] for c in ckpts]
    data, skipped = {}, []
    for task, rows in table.groupby("task", sort=True):
        m = _task_metric(str(task), set(rows["metric"]), cfg.metric)
        if m is None:
            skipped.append(str(task))
            continue
        rows = rows[rows["metric"] == m]
        dup = rows[rows.duplicated("label", keep=False)]
        if len(dup):
            raise ValidationError(f"downstream: several results for task {task!r} at checkpoint {dup['label'].iloc[0]!r}: "
                                  f"{sorted(set(dup['source']))}")
        values = rows.set_index("label")["value"].reindex(labels).to_numpy(float)
        name = str(task).replace("/", "_")
        data[name] = xr.Variable("checkpoint", values, attrs={"metric": m, "task": str(task), "role": "downstream"})
    if skipped:
        log.info("downstream: tasks without metric %r skipped: %s", cfg.metric, ", ".join(skipped))
    if not data:
        raise ValidationError(f"downstream: no task has the metric {cfg.metric!r} (metrics: {sorted(set(table['metric']))})")
    ds = xr.Dataset(data, coords={"checkpoint": labels, "tokens": ("checkpoint", [c["tokens"] for c in ckpts]),
                                  "step": ("checkpoint", [c["step"] for c in ckpts])})
    ds.attrs.update(sources=sorted(set(map(str, table["source"]))),
                    metric=cfg.metric if isinstance(cfg.metric, str) else dict(cfg.metric))
    return ds


def downstream_for_plan(plan) -> xr.Dataset | None:
    """:func:`downstream_table` of a plan's ``downstream:`` on its checkpoints; None without one."""
    cfg = plan.config.downstream
    return None if cfg is None else downstream_table(cfg, plan.checkpoints)


def stored_downstream(path: str | Path, res: xr.Dataset | None = None) -> xr.Dataset | None:
    """A store's copy of its downstream table: its variables marked ``role="downstream"``
    (the task from their ``task`` attribute), else its zarr group ``downstream``; None."""
    if res is not None:
        names = [v for v in res.data_vars if res[v].attrs.get("role") == "downstream"]
        if names:
            ds = res[names]
            return ds.rename({v: str(res[v].attrs.get("task", v)).replace("/", "_") for v in names})
    group = Path(path) / DOWNSTREAM_GROUP
    if not group.is_dir():
        return None
    from .store import _quiet

    with _quiet():
        return xr.open_zarr(path, group=DOWNSTREAM_GROUP, consolidated=False).load()


def store_downstream(path: str | Path, res: xr.Dataset, config: Mapping | None = None) -> xr.Dataset | None:
    """The downstream table of a store's done checkpoints (``res``: the store, with its
    ``done`` coordinate): its stored copy, else (when the files its config's
    ``downstream:`` names are there) read from them onto all its checkpoints; else None."""
    ds = stored_downstream(path, res)
    if ds is None:
        section = (config or {}).get("downstream")
        if not section:
            return None
        paths = section.get("path") if isinstance(section, Mapping) else section
        missing = [p for p in ([paths] if isinstance(paths, str) else list(paths or [])) if not Path(p).exists()]
        if missing:
            log.warning("downstream results skipped: the store has no copy and %s %s not here",
                        ", ".join(map(str, missing)), "is" if len(missing) == 1 else "are")
            return None
        ds = downstream_table(section, res)
    labels = res.checkpoint.values[res["done"].values] if "done" in res.coords else res.checkpoint.values
    have = set(ds.checkpoint.values.tolist())
    keep = [c for c in labels.tolist() if c in have]
    return ds.sel(checkpoint=keep)
