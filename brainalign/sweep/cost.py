"""What a sweep will cost, before it runs (``brainalign plan CONFIG``).

:class:`SweepSize` is what a sweep processes, independent of the machine: checkpoints,
layers, subjects, the words and tokens of the stories, the ridge problems (rows,
features, targets) and the bytes of weights and features. :class:`Rates` is how fast a
machine does each part: measured here by :func:`calibrate` (a forward pass of the
sweep's own model and ridge fits of the sweep's own shapes, a few seconds), or derived
for a named GPU from its peak rates and stated efficiencies (:data:`GPUS`).
:func:`estimate` puts the two together.

The ridge FLOPs come from :func:`brainalign.encoding.ridge.fit_flops`, the same rule the
solver uses to choose its route; the forward FLOPs are ``2 x parameters`` per token
plus attention (``2 x layers x context x hidden``). Predicted wall times are the sum
of the parts for one worker; downloads are counted at ``bandwidth`` bytes per second.
The LLC (``internal_states: [llc]``) costs ``6 x parameters`` per SGLD token; a
calibrated estimate includes it in the measured checkpoint task.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ValidationError

__all__ = ["SweepSize", "Rates", "GPUS", "sweep_size", "calibrate", "gpu_rates", "estimate", "format_estimate"]

#: Peak dense rates of named GPUs (FLOP/s; bytes/s for memory) from the vendors' data
#: sheets, and the fraction of each that brainalign's parts are assumed to reach there:
#: forward passes in bfloat16 at 35% of the tensor-core peak, ridge float32 GEMMs at 60%
#: of the float32 (non-tensor) peak, the float64 design part (Gram matrices and their
#: eigendecompositions) at 10% of the float64 peak.
GPUS: dict[str, dict[str, float | str]] = {
    "h100": {"name": "NVIDIA H100 SXM (80 GB)", "bf16": 989e12, "fp32": 67e12, "fp64": 67e12, "memory": 80e9},
    "h200": {"name": "NVIDIA H200 (141 GB)", "bf16": 989e12, "fp32": 67e12, "fp64": 67e12, "memory": 141e9},
    "a100": {"name": "NVIDIA A100 SXM (80 GB)", "bf16": 312e12, "fp32": 19.5e12, "fp64": 19.5e12, "memory": 80e9},
}
GPU_EFFICIENCY = {"forward": 0.35, "ridge": 0.60, "design": 0.10}
#: Share of a fit's time the default statistics add (sign test, ROI bootstrap):
#: ``bench_stats_cost.py`` measured 1.10x the fit; the block permutation test costs more.
STATS_FACTOR = {"sign": 1.10, "block": 1.5, "none": 1.0}


@dataclass
class SweepSize:
    """What a sweep processes (see the module docstring). ``groups`` lists one ridge
    problem per group of subjects that share their stories: ``n_train``/``n_test`` TRs
    and the targets of all its subjects together."""

    checkpoints: int
    layers: int
    subjects: int
    hidden: int
    params: float
    model_layers: int
    words: int
    tokens_processed: int
    context_tokens: int
    weight_bytes: float
    feature_value_bytes: int
    delays: int
    n_folds: int
    n_alphas: int
    groups: list[dict] = field(default_factory=list)
    stats: str = "sign"
    download: bool = False
    #: features per layer the fits see, when fewer than ``hidden`` (a reduction before
    #: the delays); the cache still holds ``hidden`` values per word
    fit_dims: int | None = None
    #: tokens the LLC's SGLD chains process per checkpoint (``internal_states: [llc]``;
    #: chains x draws x batch x ``llc.seq_len``), each a forward and a backward pass
    llc_tokens: int = 0

    def llc_flops(self) -> float:
        """FLOPs of one checkpoint's LLC chains (forward + backward: 6 x parameters per token)."""
        return 6.0 * self.params * self.llc_tokens

    @property
    def p(self) -> int:
        return (self.fit_dims or self.hidden) * self.delays

    def forward_flops(self) -> float:
        """FLOPs of one checkpoint's forward passes over every story."""
        return self.tokens_processed * (2.0 * self.params + 2.0 * self.model_layers * self.context_tokens * self.hidden)

    def ridge_flops(self) -> dict[str, float]:
        """FLOPs of one checkpoint's fits (every layer and group): design and target parts."""
        from ..encoding.ridge import fit_flops

        out = {"design": 0.0, "targets": 0.0}
        for g in self.groups:
            f = fit_flops(g["n_train"], self.p, g["targets"], n_folds=self.n_folds, n_alphas=self.n_alphas,
                          n_test=g["n_test"])
            out["design"] += self.layers * f["design"]
            out["targets"] += self.layers * f["targets"]
        return out

    def feature_cache_bytes(self) -> float:
        """Bytes of the feature cache of the whole sweep (every extracted layer of every story)."""
        return float(self.checkpoints) * self.words * self.hidden * self.layers * self.feature_value_bytes

    def peak_task_bytes(self) -> float:
        """Approximate peak memory of one checkpoint's task: the model's weights, that
        checkpoint's features, one group's responses and one fit's working set."""
        feats = self.words * self.hidden * self.layers * 4
        worst = 0.0
        for g in self.groups:
            resp = (g["n_train"] + g["n_test"]) * g["targets"] * 4
            r = min(self.p, g["n_train"])
            work = (self.n_folds + 2) * r * r * 8 * 2 + g["n_train"] * self.p * 12 + self.n_folds * self.n_alphas * 4096 * 4 * 2
            worst = max(worst, resp * 2 + work)
        return self.params * 4 + feats + worst


@dataclass
class Rates:
    """How fast a machine does each part (FLOP/s), and what it took to measure them."""

    where: str
    forward: float
    ridge: float
    design: float
    load_seconds: float = 0.0
    bandwidth: float = 200e6
    fixed_seconds: float = 0.0
    #: measured here (:func:`calibrate`): seconds per checkpoint task, and per layer of it
    task_base_seconds: float | None = None
    task_layer_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


def _model_facts(plan) -> tuple[int, float, int, float, Any, Any]:
    """Hidden size, parameters, layers and weight bytes of the plan's model, its tokenizer and config."""
    from transformers import AutoConfig, AutoTokenizer

    from ..features.loading import resolve_source, tokenizer_folder
    from .run import _source_cache

    model, revision = plan.checkpoints[0].model, plan.checkpoints[0].revision
    cache = _source_cache(plan.config) if revision is not None else None  # weights.mirror: read from there
    src = resolve_source(model, revision, cache)
    cfg = AutoConfig.from_pretrained(src.load_from, revision=src.load_revision, cache_dir=cache,
                                     trust_remote_code=plan.config.model.trust_remote_code)
    tok = AutoTokenizer.from_pretrained(tokenizer_folder(src), revision=src.load_revision, cache_dir=cache)
    hidden = int(getattr(cfg, "hidden_size", getattr(cfg, "d_model", 0)))
    n_layers = int(getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layer", 0)))
    vocab = int(getattr(cfg, "vocab_size", 0))
    inter = int(getattr(cfg, "intermediate_size", 4 * hidden) or 4 * hidden)
    params = n_layers * (4 * hidden * hidden + 2 * hidden * inter) + 2 * vocab * hidden
    folder = Path(src.load_from)  # a local checkpoint folder, else a hub id (no files here)
    files = (list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))) if folder.is_dir() else []
    weight_bytes = float(sum(f.stat().st_size for f in files)) if files else params * 2.0
    return hidden, float(params), n_layers, weight_bytes, tok, cfg


def _tokens_processed(stories, tok, model_cfg, plan, context: int) -> int:
    """Tokens the forward passes of one checkpoint read, with the windows, special
    tokens and position cap that feature extraction uses."""
    from ..features.align import align_words, special_tokens
    from ..features.extraction import effective_window
    from ..features.loading import model_kind
    from ..features.windows import causal_windows, encoder_windows, tokens_processed

    kind = model_kind(model_cfg)
    ctx, _ = effective_window(model_cfg, tok, kind, plan.config.model.name, context, None)
    prefix, suffix = special_tokens(tok)
    n_special = len(prefix) + (0 if kind == "causal" else len(suffix))
    total = 0
    for st in stories:
        al = align_words(list(st.words), tok, story=st.name)
        wins = causal_windows(al.n_tokens, ctx) if kind == "causal" else encoder_windows(al.word_first, al.word_last, ctx)
        total += tokens_processed(wins) + len(wins) * n_special
    return total


def sweep_size(plan) -> SweepSize:
    """The :class:`SweepSize` of a :func:`~brainalign.sweep.make_plan` plan (loads the
    dataset and the first checkpoint's config and tokenizer; no weights)."""
    cfg = plan.config
    ds = plan.dataset()
    hidden, params, n_layers, weight_bytes, tok, model_cfg = _model_facts(plan)
    stories = sorted({st for s in plan.subjects for st in ds.stories_of(s)})
    words = sum(ds.stories[st].n_words for st in stories)
    context = int(cfg.features.context_tokens)
    n_tok = _tokens_processed([ds.stories[st] for st in stories], tok, model_cfg, plan, context)
    groups: dict[tuple, dict] = {}
    for s in plan.subjects:
        train, test = tuple(ds.train_stories_of(s)), tuple(ds.test_stories_of(s))
        g = groups.setdefault((train, test), {"n_train": sum(ds.stories[st].n_trs for st in train),
                                              "n_test": sum(ds.stories[st].n_trs for st in test),
                                              "targets": 0, "subjects": 0})
        g["targets"] += int(ds.space(s).n_targets)
        g["subjects"] += 1
    return SweepSize(
        checkpoints=len(plan.checkpoints), layers=len(plan.layers), subjects=len(plan.subjects), hidden=hidden,
        params=params, model_layers=n_layers, words=int(words), tokens_processed=int(n_tok), context_tokens=context,
        weight_bytes=weight_bytes, feature_value_bytes=2 if cfg.features.float16 else 4, delays=len(cfg.encoding.delays),
        n_folds=int(cfg.encoding.n_folds), n_alphas=len(cfg.encoding.alpha_values()), groups=list(groups.values()),
        stats=cfg.stats.test, download=any(c.revision is not None for c in plan.checkpoints),
        llc_tokens=_llc_tokens(plan),
    )


def _llc_tokens(plan) -> int:
    """Tokens of one checkpoint's LLC chains: chains x draws x batch x the length of the
    sequences it is measured on (a task model's own, else ``llc.seq_len``); 0 without it."""
    cfg = plan.config
    if "llc" not in cfg.internal_states:
        return 0
    from ..dynamics.states import llc_data
    from .run import _state_context

    x, _, _ = llc_data(_state_context(cfg, plan.dataset(), plan.checkpoints[-1]))
    return int(cfg.llc.chains * cfg.llc.draws * cfg.llc.batch_size * x.shape[1])


def _task_seconds(plan, layers: list[int], folder) -> float:
    """Wall time of :func:`~brainalign.sweep.run_checkpoint` on the plan's first
    checkpoint with only ``layers``, into a throwaway store, without the feature cache."""
    import dataclasses

    from .run import _create_store, run_checkpoint
    from .store import ResultsStore

    cfg = plan.config.model_copy(deep=True)
    cfg.features.cache = False
    cfg.output.store = str(Path(folder) / f"calibration-{len(layers)}.zarr")
    p = dataclasses.replace(plan, layers=list(layers), config=cfg)
    store = ResultsStore(p.store_path)
    with store.writer():
        _create_store(p, store, True)
        t0 = time.perf_counter()
        run_checkpoint(p, 0)
        return time.perf_counter() - t0


def calibrate(plan, size: SweepSize | None = None, bandwidth: float = 200e6) -> Rates:
    """:class:`Rates` of this machine: the sweep's own first checkpoint run for real
    (features of every story, then the fits of one and of two layers, statistics
    included, into a temporary store, without the feature cache), so the prediction is
    ``base + layers x per-layer`` seconds per checkpoint. A first, warm-up run pays the
    one-time costs (imports, the first read of the weights); its excess is added once.
    It costs about three checkpoint tasks: for a large model, predict with ``--gpu``
    (no calibration) or calibrate on a smaller sibling."""
    import tempfile

    from .run import weight_stream

    size = size or sweep_size(plan)
    mid = plan.layers[len(plan.layers) // 2]
    other = plan.layers[0] if plan.layers[0] != mid else plan.layers[-1]
    rev = plan.checkpoints[0].revision
    t0 = time.perf_counter()
    # a hub revision is fetched (from weights.mirror, or the hub) and freed, as the sweep would
    with tempfile.TemporaryDirectory(prefix="brainalign-plan-") as tmp, weight_stream(plan, prefetch=0) as ws:
        ws.acquire(rev)
        warm = _task_seconds(plan, [mid], tmp + "/w")
        one = _task_seconds(plan, [mid], tmp + "/a")
        two = _task_seconds(plan, sorted({mid, other}), tmp + "/b") if other != mid else one
        ws.done(rev)
    per_layer = max(two - one, 0.0) if other != mid else 0.0
    base = max(one - per_layer, 0.0)
    return Rates(where="this machine (calibrated)", forward=np.nan, ridge=np.nan, design=np.nan,
                 bandwidth=bandwidth, fixed_seconds=max(warm - one, 0.0), task_base_seconds=base,
                 task_layer_seconds=per_layer,
                 notes=[f"calibration: the first checkpoint run with 1 and 2 layers ({time.perf_counter() - t0:.1f} s): "
                        f"{base:.3g} s per checkpoint (features, ROI summary, store) + {per_layer:.3g} s per layer "
                        "(ridge, statistics)"])


def gpu_rates(name: str, bandwidth: float = 1e9) -> Rates:
    """:class:`Rates` of a named GPU (:data:`GPUS`) from its peaks and :data:`GPU_EFFICIENCY`."""
    key = name.lower().replace("nvidia", "").replace("-", "").strip()
    if key not in GPUS:
        raise ValidationError(f"unknown GPU {name!r}; known: {', '.join(sorted(GPUS))}")
    g, e = GPUS[key], GPU_EFFICIENCY
    return Rates(where=str(g["name"]), forward=float(g["bf16"]) * e["forward"], ridge=float(g["fp32"]) * e["ridge"],
                 design=float(g["fp64"]) * e["design"], load_seconds=5.0, bandwidth=bandwidth,
                 notes=[f"peaks from the data sheet; efficiencies assumed: forward {e['forward']:.0%} of bf16, "
                        f"ridge {e['ridge']:.0%} of fp32, the float64 design part (Grams, eigendecompositions) {e['design']:.0%} of fp64; "
                        "checkpoint load 5 s"])


def estimate(size: SweepSize, rates: Rates) -> dict:
    """Predicted bytes and seconds of a sweep of ``size`` at ``rates`` (one worker)."""
    rf = size.ridge_flops()
    download = size.weight_bytes / rates.bandwidth if size.download else 0.0
    if rates.task_base_seconds is not None:
        per_ckpt = {"download": download, "features": rates.task_base_seconds,
                    "ridge": size.layers * rates.task_layer_seconds}
    else:
        per_ckpt = {
            "download": download,
            "load": rates.load_seconds,
            "features": size.forward_flops() / rates.forward,
            "ridge": (rf["targets"] / rates.ridge + rf["design"] / rates.design) * STATS_FACTOR.get(size.stats, 1.0),
        }
        if size.llc_tokens:  # SGLD runs in float32: at the float32 GEMM rate
            per_ckpt["llc"] = size.llc_flops() / rates.ridge
    total = {k: v * size.checkpoints for k, v in per_ckpt.items()}
    return {
        "size": {**asdict(size), "fits": size.checkpoints * size.layers * len(size.groups)},
        "where": rates.where,
        "notes": rates.notes,
        "tokens_per_checkpoint": size.tokens_processed,
        "download_bytes": size.weight_bytes * size.checkpoints if size.download else 0.0,
        "feature_cache_bytes": size.feature_cache_bytes(),
        "forward_flops_per_checkpoint": size.forward_flops(),
        "ridge_flops_per_checkpoint": rf["design"] + rf["targets"],
        "peak_task_bytes": size.peak_task_bytes(),
        "seconds_per_checkpoint": per_ckpt,
        "seconds": {**total, "total": float(sum(total.values())) + rates.fixed_seconds},
    }


def _bytes(v: float) -> str:
    for div, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if v >= div:
            return f"{v / div:.3g} {unit}"
    return f"{v:.0f} B"


def _seconds(v: float) -> str:
    if v >= 3600:
        return f"{v / 3600:.3g} h"
    if v >= 60:
        return f"{v / 60:.3g} min"
    return f"{v:.3g} s"


def format_estimate(est: dict, as_json: bool = False) -> str:
    """The estimate as text lines (or JSON)."""
    if as_json:
        return json.dumps(est, indent=2, default=float)
    s = est["size"]
    lines = [
        f"sweep: {s['checkpoints']} checkpoints x {s['layers']} layers x {s['subjects']} subjects "
        f"({s['fits']} ridge fits; {len(s['groups'])} design(s) per layer)",
        f"tokens processed per checkpoint: {est['tokens_per_checkpoint']:,} ({s['words']:,} words)",
        f"download: {_bytes(est['download_bytes'])}; feature cache: {_bytes(est['feature_cache_bytes'])}",
        f"forward FLOPs per checkpoint: {est['forward_flops_per_checkpoint']:.3g}; "
        f"ridge FLOPs per checkpoint: {est['ridge_flops_per_checkpoint']:.3g}",
        f"peak memory per task (approx.): {_bytes(est['peak_task_bytes'])}",
        f"predicted wall time on {est['where']}: {_seconds(est['seconds']['total'])} "
        + "(" + ", ".join(f"{k} {_seconds(v)}" for k, v in est["seconds"].items() if k != "total" and v) + ")",
    ]
    lines += [f"  note: {n}" for n in est["notes"]]
    return "\n".join(lines)
