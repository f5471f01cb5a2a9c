"""Named, versioned protocols and result cards: "how brain-like is my model?" in one call.

A :class:`Protocol` fixes everything that makes two models' numbers comparable: the data
set and its split, delays, alphas, folds, context length, which layers are sampled (by
relative depth, so models of different depths are compared at the same depths), the ROI
set and the statistics. :func:`score` runs a protocol on one model (one revision) as a
one-checkpoint sweep (so a re-run reuses the feature cache and finished work) and writes
a *result card*: a small JSON beside the sweep's zarr store with, per layer and ROI, the
held-out score with its block-bootstrap interval (test TRs and subjects resampled), the
ROI-level p-value, the ceiling-normalised score where ceilings exist, the layer chosen on
the training stories' CV score, and summary numbers; and the same for a baseline: the
same architecture with random weights (what the training added).

Protocols are registered by name (``<dataset>-v<N>``); :func:`register_protocol` adds a
user's own. A protocol's numbers never change within a version: change anything and
register a new version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ._io import atomic_path
from .errors import ValidationError

log = logging.getLogger(__name__)

__all__ = ["Protocol", "PROTOCOLS", "register_protocol", "get_protocol", "score", "read_card", "compare", "leaderboard",
           "CARD_VERSION"]

#: version of the card's JSON layout
CARD_VERSION = 1
#: relative depths every protocol samples (embeddings excluded: depth 0 is the input)
DEPTHS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Protocol:
    """Everything that makes scores comparable across models. Frozen: a new setting is a new version."""

    name: str
    dataset: str
    version: int
    description: str
    dataset_options: dict = field(default_factory=dict)
    depths: tuple[float, ...] = DEPTHS
    context_tokens: int = 512
    alphas: tuple[float, float, int] = (0.0, 6.0, 13)
    n_folds: int = 5
    delays: tuple[int, ...] = (1, 2, 3, 4)
    rois: str = "language"
    stats: dict = field(default_factory=lambda: {"test": "sign", "fdr": 0.05})

    @property
    def key(self) -> str:
        """A hash of every setting: cards with different keys are not comparable."""
        blob = json.dumps(asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def config(self, model: str, revision: str | None, root: str | None, subjects: list[str] | None,
               store: Path, trust_remote_code: bool = False) -> dict:
        """The sweep config of this protocol for one model revision."""
        return {
            "dataset": {"name": self.dataset, "root": root, "subjects": subjects, "options": dict(self.dataset_options)},
            "model": {"name": model, "revisions": None if revision is None else [revision],
                      "trust_remote_code": trust_remote_code},
            "layers": {"depths": list(self.depths)},
            "features": {"context_tokens": self.context_tokens},
            "encoding": {"alphas": {"logspace": list(self.alphas)}, "n_folds": self.n_folds, "delays": list(self.delays)},
            "stats": dict(self.stats),
            "rois": {"atlas": self.rois, "how": "mean"},
            "output": {"store": str(store)},
        }


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol, replace: bool = False) -> Protocol:
    """Add ``protocol`` to :data:`PROTOCOLS` (a name already taken is refused unless ``replace``)."""
    if protocol.name in PROTOCOLS and not replace and PROTOCOLS[protocol.name] != protocol:
        raise ValidationError(f"protocol {protocol.name!r} exists with other settings: register a new version")
    PROTOCOLS[protocol.name] = protocol
    return protocol


register_protocol(Protocol(
    "lebel2023-v1", "lebel2023", 1,
    "LeBel et al. 2023 (ds003020): the dataset's standard split (test story wheretheressmoke), the reference "
    "encoding settings (delays 1-4 TRs), 512-token context, layers at depths 0.25-1, language ROIs"))
register_protocol(Protocol(
    "narratives-v1", "narratives", 1,
    "Narratives (ds002345) on fsaverage6: the adapter's default split, delays 1-4 TRs, 512-token context, "
    "layers at depths 0.25-1, language ROIs"))
register_protocol(Protocol(
    "simulated-v1", "simulated", 1,
    "The simulated data set (known ground truth, fsaverage5, 3 subjects, two held-out stories), for testing "
    "models and the package itself; not a brain benchmark",
    dataset_options={"n_subjects": 3, "space": "fsaverage5", "snr": 4.0, "seed": 0,
                     "test_story": ["thelighthousekeeper", "thewatchmaker"]},
    context_tokens=128, alphas=(0.0, 5.0, 11)))


def get_protocol(name: str | Protocol | None, dataset: str | None = None) -> Protocol:
    """A registered protocol by name, or the newest one of ``dataset``."""
    if isinstance(name, Protocol):
        return name
    if name is None:
        if dataset is None:
            raise ValidationError("give a protocol name or a dataset")
        mine = [p for p in PROTOCOLS.values() if p.dataset == dataset]
        if not mine:
            raise ValidationError(f"no protocol for dataset {dataset!r} (protocols: {', '.join(sorted(PROTOCOLS))})")
        return max(mine, key=lambda p: p.version)
    if name not in PROTOCOLS:
        raise ValidationError(f"unknown protocol {name!r} (protocols: {', '.join(sorted(PROTOCOLS))})")
    return PROTOCOLS[name]


# -- the card --------------------------------------------------------------------------------
def _num(x) -> float | None:
    x = float(x)
    return round(x, 8) if np.isfinite(x) else None


def _card_numbers(res) -> dict:
    """Per layer and ROI, and at the layer chosen on the training stories, from a one-checkpoint store."""
    from .rois import choose_layer
    from .sweep.analyze import roi_intervals, roi_pvalues

    ck = str(res.checkpoint.values[-1])
    one = res.sel(checkpoint=[ck])
    iv = roi_intervals(one).isel(checkpoint=0)
    roi_p = {int(layer): roi_pvalues(one, layer=int(layer)).isel(checkpoint=0) for layer in one.layer.values}
    cv = one["roi_cv_score"].isel(checkpoint=0).mean("subject")
    ceiling = _roi_ceiling(one)
    layers = []
    for layer, depth in zip(one.layer.values.tolist(), one.depth.values.tolist()):
        rois = {}
        for roi in one.roi.values.tolist():
            est = float(iv.estimate.sel(roi=roi, layer=layer))
            rois[roi] = {"score": _num(est), "lo": _num(iv.lo.sel(roi=roi, layer=layer)),
                         "hi": _num(iv.hi.sel(roi=roi, layer=layer)), "p": _num(roi_p[layer].sel(roi=roi)),
                         "cv_score": _num(cv.sel(roi=roi, layer=layer)),
                         "normalised": _num(est / ceiling[roi]) if ceiling and ceiling.get(roi) else None}
        layers.append({"layer": int(layer), "depth": _num(depth), "rois": rois})
    chosen = choose_layer(one["roi_score"].isel(checkpoint=0), one["roi_cv_score"].isel(checkpoint=0))
    best = {}
    for roi in one.roi.values.tolist():
        bl = float(chosen["best_layer"].sel(roi=roi))
        if np.isfinite(bl):
            entry = next(x for x in layers if x["layer"] == int(bl))
            best[roi] = {"layer": int(bl), "depth": entry["depth"], **entry["rois"][roi]}
    return {"checkpoint": ck, "layers": layers, "best": best, "summary": _summary(one, best)}


def _roi_ceiling(res) -> dict | None:
    """ROI-mean noise ceiling (subjects and targets; undefined CCmax counts as 0) where the store has ceilings."""
    from .sweep.analyze import roi_ceilings

    return roi_ceilings(res, res.attrs.get("config") or {}, res.attrs.get("space", ""))


def _summary(res, best: dict) -> dict:
    """Whole-cortex and language-network numbers at the layers chosen on the training stories."""
    out = {}
    cv = res["cv_score"].isel(checkpoint=0).mean(["subject", "target"])
    layer = int(res.layer.values[int(np.nanargmax(cv.values))])
    out["whole_cortex"] = {"layer": layer, "score": _num(res["score"].isel(checkpoint=0).sel(layer=layer)
                                                         .mean("target").mean("subject")),
                           "rule": "mean over targets of held-out r, subject mean; layer by the mean CV score"}
    lang = [r for r in best if "other" not in r and r != "whole_cortex"]
    if lang:
        out["language"] = {"score": _num(np.mean([best[r]["score"] for r in lang if best[r]["score"] is not None])),
                           "rois": lang, "rule": "mean over the ROIs of their score at their chosen layer"}
    return out


def _random_init(model: str, revision: str | None, folder: Path, trust_remote_code: bool) -> Path:
    """The model's architecture with random weights (seed 0), saved once as safetensors."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from .features.loading import model_kind

    if (folder / "config.json").is_file():
        return folder
    cfg = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
    cls = AutoModelForCausalLM if model_kind(cfg, "auto") == "causal" else AutoModel
    torch.manual_seed(0)
    net = cls.from_config(cfg, trust_remote_code=trust_remote_code)
    with atomic_path(folder, directory=True) as tmp:
        net.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code).save_pretrained(tmp)
    return folder


def _word_rate_numbers(proto: Protocol, root: str | None, subjects: list[str] | None) -> dict:
    """The low-level baseline: one feature, the word rate (the Lanczos sum of a 1 per word
    is the number of words near each TR), fitted and summarised as a model layer would be."""
    from . import datasets, encoding, rois
    from .features import WordFeatures
    from .stimulus import FSAVERAGE_SIZES
    from .surfaces.atlases import whole_targets
    from .sweep.run import BOOTSTRAP

    ds = datasets.load(proto.dataset, root=root, subjects=subjects, **proto.dataset_options)
    space = ds.space(ds.subjects[0])
    if space.name in FSAVERAGE_SIZES:
        atlas = rois.load_atlas(proto.rois, space=space.name)
    else:  # no atlas for this space: all targets, as sweeps do
        atlas = whole_targets(space.n_targets, space.name)
    feats = {(name, 0): np.ones((st.n_words, 1), np.float32) for name, st in ds.stories.items()}
    wf = WordFeatures("word rate", None, [0], 1, feats, list(ds.stories))
    a, b, n = proto.alphas
    res = encoding.fit(wf, ds, layers=[0], alphas=np.logspace(a, b, int(n)), n_folds=proto.n_folds,
                       delays=tuple(proto.delays), rois=atlas, n_boot=BOOTSTRAP["n_boot"],
                       boot_block_length=BOOTSTRAP["block_length"], random_state=BOOTSTRAP["seed"], progress=False)
    res["roi_cv_score"] = rois.aggregate(res, atlas=atlas, how="mean")["cv_score"]
    res = res.assign_coords(depth=("layer", [0.0])).expand_dims(checkpoint=["word-rate"])
    res.attrs.update(config={"rois": {"atlas": proto.rois}}, space=space.name)
    if "ceiling" in res:
        res["ceiling"] = res["ceiling"].isel(checkpoint=0)
    return _card_numbers(res)


def _one_checkpoint(model: str, revision: str | None) -> str | None:
    """A folder of ``checkpoint-*`` subfolders scores its last one unless a revision is given."""
    p = Path(os.path.expanduser(model))
    if revision is not None or not p.is_dir() or (p / "config.json").is_file():
        return revision
    subs = sorted((d for d in p.iterdir() if d.is_dir() and (d / "config.json").is_file()),
                  key=lambda d: (int(d.name.rsplit("-", 1)[-1]) if d.name.rsplit("-", 1)[-1].isdigit() else -1, d.name))
    if not subs:
        raise ValidationError(f"model folder {p} has no config.json and no checkpoint folders")
    log.info("model folder %s: scoring its last checkpoint, %s (give a revision for another)", p, subs[-1].name)
    return subs[-1].name


def score(model: str, *, dataset: str | None = None, root: str | None = None, subjects: list[str] | None = None,
          protocol: str | Protocol | None = None, revision: str | None = None, out: str | os.PathLike = "brainalign-score",
          baseline: bool = True, progress: bool = True, trust_remote_code: bool = False) -> dict:
    """Score one model (one revision) under a protocol; writes and returns its result card.

    ``out`` gets ``card.json``, the sweep store ``results.zarr`` and, with ``baseline``,
    ``baseline-random-init.zarr`` (the same architecture with random weights, scored under
    the same protocol) and the card's ``baselines`` get its numbers and those of word rate
    alone (one feature, same protocol). Re-running reuses both stores.
    """
    from . import __version__
    from .sweep import run

    proto = get_protocol(protocol, dataset)
    if dataset is not None and dataset != proto.dataset:
        raise ValidationError(f"protocol {proto.name} is for dataset {proto.dataset!r}, not {dataset!r}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    revision = _one_checkpoint(model, revision)
    sweep = run(proto.config(model, revision, root, subjects, out / "results.zarr", trust_remote_code), progress=progress)
    res = sweep.results
    card = {"brainalign_card": CARD_VERSION, "protocol": {"name": proto.name, "version": proto.version, "key": proto.key,
                                                          "description": proto.description},
            "model": {"name": model, "revision": revision}, "dataset": {"name": proto.dataset, "root": root,
                                                                        "subjects": [str(s) for s in res.subject.values]},
            "brainalign_version": __version__, "git_commit": res.attrs.get("git_commit"),
            "created": datetime.now(timezone.utc).isoformat(), "store": "results.zarr",
            **_card_numbers(res), "baselines": {}}
    if baseline:
        local = Path(os.path.expanduser(model))
        src, rev = (str(local / revision), None) if local.is_dir() and revision else (model, revision)
        init = _random_init(src, rev, out / "random-init-model", trust_remote_code)
        base = run(proto.config(str(init), None, root, subjects, out / "baseline-random-init.zarr", trust_remote_code),
                   progress=progress).results
        numbers = _card_numbers(base)
        card["baselines"]["random_init"] = {"store": "baseline-random-init.zarr", "best": numbers["best"],
                                            "summary": numbers["summary"]}
    if baseline:
        numbers = _word_rate_numbers(proto, root, subjects)
        card["baselines"]["word_rate"] = {"best": numbers["best"], "summary": numbers["summary"]}
    with atomic_path(out / "card.json") as tmp:
        Path(tmp).write_text(json.dumps(card, indent=1))
    return card


def read_card(path: str | os.PathLike) -> dict:
    """A result card (``card.json``, or the folder holding it), checked."""
    p = Path(path)
    if p.is_dir():
        p = p / "card.json"
    if not p.is_file():
        raise ValidationError(f"no result card at {p}")
    try:
        card = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{p} is not a result card (not JSON: {exc})") from exc
    if not isinstance(card, dict) or card.get("brainalign_card") != CARD_VERSION:
        raise ValidationError(f"{p} is not a brainalign result card of version {CARD_VERSION}")
    return card


# -- comparing cards --------------------------------------------------------------------------
def _card_store(card: dict, folder: Path):
    """The card's store, cut to its checkpoint, with layers numbered by their position in the
    protocol's depths (so two models of different depths line up)."""
    from .sweep import Sweep

    res = Sweep(folder / card["store"]).results.sel(checkpoint=[card["checkpoint"]])
    keep = [v for v in ("roi_score", "roi_cv_score", "roi_boot") if v in res]
    res = res[keep].assign_coords(layer=np.arange(res.sizes["layer"])).drop_vars(
        [c for c in ("depth", "step", "tokens", "done") if c in res.coords])
    return res


def _comparable(cards: list[dict], where: list[Path]) -> None:
    first = cards[0]
    for card, p in zip(cards[1:], where[1:]):
        for what, key in (("protocol", ("protocol", "key")), ("protocol version", ("protocol", "version")),
                          ("dataset", ("dataset", "name")), ("subjects", ("dataset", "subjects"))):
            if card[key[0]][key[1]] != first[key[0]][key[1]]:
                raise ValidationError(f"cards {where[0]} and {p} differ in {what} ({first[key[0]][key[1]]!r} vs "
                                      f"{card[key[0]][key[1]]!r}): their scores are not comparable")


def compare(*paths: str | os.PathLike, level: float = 0.95):
    """Models side by side: paired differences of ROI scores (the same targets, test TRs and
    bootstrap blocks), at each model's layer chosen on the training stories and at each
    relative depth of the protocol.

    Subjects are kept fixed (both models were scored on the same subjects; the
    difference is about these subjects' data). Returns a pandas DataFrame, one row per
    (model after the first, ROI, layer rule):
    ``difference`` (that model minus the first), its interval and two-sided p-value. Cards
    made with different protocols, protocol versions, datasets or subjects are refused.
    """
    import pandas as pd
    import xarray as xr

    from .sweep.analyze import checkpoint_difference

    if len(paths) < 2:
        raise ValidationError("compare needs at least two cards")
    where = [Path(p) if Path(p).is_dir() else Path(p).parent for p in paths]
    cards = [read_card(p) for p in paths]
    _comparable(cards, where)
    stores = [_card_store(c, w).assign_coords(checkpoint=[f"m{i}"]) for i, (c, w) in enumerate(zip(cards, where))]
    both = xr.concat(stores, "checkpoint", coords="minimal", compat="override", join="override")
    both.attrs["bootstrap"] = stores[0].attrs.get("bootstrap", {})  # the same blocks in every card (same protocol)
    depths = [x["depth"] for x in cards[0]["layers"]]
    rows = []
    for i in range(1, len(cards)):
        for rule in ["best", *range(len(depths))]:
            d = checkpoint_difference(both, "m0", f"m{i}", layer=rule, level=level, subjects="fixed")
            for roi in d.roi.values.tolist():
                rows.append({"model": _label(cards[i]), "versus": _label(cards[0]), "roi": roi,
                             "layer": "chosen (CV)" if rule == "best" else f"depth {depths[rule]:g}",
                             "difference": float(d.difference.sel(roi=roi)), "lo": float(d.lo.sel(roi=roi)),
                             "hi": float(d.hi.sel(roi=roi)), "p": float(d.pvalue.sel(roi=roi))})
    return pd.DataFrame(rows)


def _label(card: dict) -> str:
    m = card["model"]
    return m["name"] + (f"@{m['revision']}" if m.get("revision") else "")


# -- leaderboard ------------------------------------------------------------------------------
_SORT_JS = """<script>
document.querySelectorAll('th').forEach((th, i) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], rows = [...body.rows], up = th.dataset.up !== '1';
  const key = r => { const t = r.cells[i].innerText, x = parseFloat(t); return isNaN(x) ? t : x; };
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1));
  th.dataset.up = up ? '1' : '0'; rows.forEach(r => body.appendChild(r));
}));
</script>"""


def _row(card: dict, path: Path) -> dict:
    s, base = card["summary"], card.get("baselines", {}).get("random_init", {}).get("summary", {})
    lang = s.get("language", {}).get("score")
    best = max(card["best"].items(), key=lambda kv: -np.inf if kv[1]["score"] is None else kv[1]["score"], default=None)
    return {
        "model": card["model"]["name"], "revision": card["model"].get("revision") or "",
        "protocol": f"{card['protocol']['name']} ({card['protocol']['key']})", "dataset": card["dataset"]["name"],
        "subjects": len(card["dataset"]["subjects"]),
        "language r": lang, "whole cortex r": s.get("whole_cortex", {}).get("score"),
        "best ROI": f"{best[0]} ({best[1]['score']:.3f}, depth {best[1]['depth']:g})" if best and best[1]["score"] is not None else "",
        "random-init language r": base.get("language", {}).get("score"),
        "brainalign": card.get("brainalign_version", ""), "git commit": (card.get("git_commit") or "")[:12],
        "created": card.get("created", "")[:19], "card": str(path),
    }


def leaderboard(folder: str | os.PathLike, out: str | os.PathLike | None = None):
    """Every result card under ``folder`` as one table: ``leaderboard.html`` (sortable by
    clicking a column) and ``leaderboard.md`` in ``out`` (default ``folder``). Returns the
    table (pandas DataFrame), best language-network score first. Cards of different
    protocols are listed together but the protocol column says which numbers compare."""
    import html

    import pandas as pd

    root = Path(folder)
    paths = sorted(root.rglob("card.json"))
    if not paths:
        raise ValidationError(f"no result cards (card.json) under {root}")
    table = pd.DataFrame([_row(read_card(p), p.parent.relative_to(root)) for p in paths])
    table = table.sort_values(["protocol", "language r", "whole cortex r"], ascending=[True, False, False],
                              na_position="last").reset_index(drop=True)
    out = Path(out) if out is not None else root
    fmt = table.copy()
    for col in ("language r", "whole cortex r", "random-init language r"):
        fmt[col] = [("" if v is None or not np.isfinite(v) else f"{v:.4f}") for v in fmt[col]]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in fmt.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in fmt.values)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>brainalign leaderboard</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:4px 8px;"
            "border-bottom:1px solid #ddd;text-align:left}th{cursor:pointer;background:#f4f4f4}</style></head><body>"
            f"<h1>brainalign leaderboard</h1><p>{len(table)} result cards under {html.escape(str(root.name))}. "
            "Scores are held-out Pearson r; compare rows of the same protocol only.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{_SORT_JS}</body></html>")
    md = ["| " + " | ".join(fmt.columns) + " |", "|" + " --- |" * len(fmt.columns)]
    md += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in fmt.values]
    with atomic_path(out / "leaderboard.html") as tmp:
        Path(tmp).write_text(page)
    with atomic_path(out / "leaderboard.md") as tmp:
        Path(tmp).write_text("\n".join(md) + "\n")
    return table
