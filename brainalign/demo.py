"""``brainalign demo``: the whole pipeline, offline, on embedded data, in minutes.

1. Simulated story-listening fMRI on fsaverage5: the project's own stories with natural
   word timings, responses driven by a middle layer of the pretrained MiniLM in planted
   regions, AR(1) noise smooth across the cortex, a repeated test story.
2. A tiny GPT-NeoX trained on a corpus disjoint from the stories
   (``datasets/training_corpus``: ten texts, ~10k words, no sentence or 8-word sequence
   in common with the stimuli), with log-spaced checkpoints from the untrained step 0.
3. The sweep: every checkpoint x every layer x every subject, resumable zarr store,
   per-vertex sign-randomisation p-values (FDR) and ROI tests.
4. ROI curves, phase detection gated by those tests, internal-state curves, thresholded
   flatmaps, a training movie and the HTML report.

The stage times are written to ``demo_timings.json`` in the output folder
(``benchmarks/bench_demo.py`` reads them).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["demo_config", "run_demo", "training_corpus_dir"]

#: simulated data the demo uses (and the sweep reloads, deterministically, by seed)
#: two held-out stories (~150 TRs): one 74-TR story leaves too few TRs for vertex-wise
#: significance to survive FDR over 20,484 vertices; two subjects: the ridge fits and
#: tests grow with the targets, and 16 checkpoints x 3 subjects took `make demo` past
#: 6 minutes on 2 cores (7 min 1 s; 2 subjects: benchmarks/README.md)
DEMO_DATA = {"n_subjects": 2, "stories": None, "test_story": ["thelighthousekeeper", "thewatchmaker"],
             "space": "fsaverage5", "snr": 4.0, "seed": 0}
QUICK_DATA = {"n_subjects": 2, "stories": 5, "test_story": DEMO_DATA["test_story"], "space": "fsaverage5", "snr": 4.0,
              "seed": 0}
#: The tiny model's training run: 400 steps of 16 x 128 tokens (819k tokens, ~35 passes
#: over the ~24k-token training corpus), 16 log-spaced checkpoints (17 asked; steps 1-3
#: round together), step 0 (the untrained model, the report's "init" position) included.
#: The held-out loss falls until ~250-370k tokens and then rises while the training loss
#: keeps falling: the model memorises its corpus over the last few checkpoints
#: (``training_log.json``: the train / held-out gap grows from 0.01 to ~1.4 nats).
DEMO_TRAIN = {"n_layers": 2, "hidden": 64, "heads": 4, "seq_len": 128, "steps": 400, "batch_size": 16,
              "checkpoints": 17, "weight_decay": 0.1}
QUICK_TRAIN = {"n_layers": 2, "hidden": 32, "heads": 2, "seq_len": 64, "steps": 40, "batch_size": 8, "checkpoints": 6}


def training_corpus_dir() -> Path:
    """The demo model's training texts: ``datasets/training_corpus`` of the checkout
    (or ``$BRAINALIGN_TRAINING_CORPUS``), disjoint from the stimulus stories."""
    env = os.environ.get("BRAINALIGN_TRAINING_CORPUS")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1] / "datasets" / "training_corpus"


def demo_config(out: Path, model_dir: Path, quick: bool = False) -> dict:
    """The sweep config of the demo (also a template for users' own runs)."""
    return {
        "dataset": {"name": "simulated", "options": dict(QUICK_DATA if quick else DEMO_DATA)},
        "model": {"name": str(model_dir)},
        "layers": "all",
        "features": {"context_tokens": 64 if quick else 128, "batch_size": 16},  # the model's own length
        # 3 story folds and one alpha per decade: 0.6x the CPU time of 5 folds x 11 alphas
        # per checkpoint, the same ROI scores to 3 decimals (benchmarks/README.md, demo)
        "encoding": {"alphas": {"logspace": [0, 5, 6]}, "n_folds": 3},
        # per-vertex sign-randomisation p-values (BH-FDR) and the ROI test: thresholded
        # maps, phases claimed only where alignment is above chance
        "stats": {"test": "sign"},
        "rois": {"atlas": "language", "how": "mean"},
        # stored per checkpoint beside the scores; add llc (pip install 'brainalign[devinterp]')
        # for the learning coefficient (about 14 s per checkpoint of this model on one CPU core)
        "internal_states": ["memorisation", "weight_norm"],
        "output": {"store": str(out / "results.zarr")},
    }


def write_ground_truth_atlas(dataset, folder: Path) -> Path:
    """The simulation's planted regions (of its first subject) as a label GIfTI pair,
    plus ``other_cortex``: the vertices off the medial wall where no subject has signal
    (the subjects' regions are jittered, so another subject's region can reach past the
    first one's). Returns the left file.
    """
    import nibabel as nib
    import numpy as np

    from .surfaces.meshes import medial_wall

    gt = dataset.ground_truth
    labels = gt.roi_labels[dataset.subjects[0]].astype(np.int32).copy()
    other = max(gt.roi_names) + 1
    planted = np.any([gt.responsive[s] for s in dataset.subjects], axis=0)
    labels[(labels == 0) & ~planted & ~medial_wall(dataset.space(dataset.subjects[0]).name)] = other
    # the atlas reader prefixes each name with its hemisphere
    names = {k: v.split("_", 1)[1] if v[:2] in ("L_", "R_") else v for k, v in gt.roi_names.items()}
    names[other] = "other_cortex"
    folder.mkdir(parents=True, exist_ok=True)
    n = labels.size // 2
    for hemi, part in (("lh", labels[:n]), ("rh", labels[n:])):
        table = nib.gifti.GiftiLabelTable()
        for k, name in [(0, "unknown"), *sorted(names.items())]:
            lab = nib.gifti.GiftiLabel(key=k)
            lab.label = name
            table.labels.append(lab)
        arr = nib.gifti.GiftiDataArray(part, intent="NIFTI_INTENT_LABEL", datatype="NIFTI_TYPE_INT32")
        nib.save(nib.gifti.GiftiImage(darrays=[arr], labeltable=table), folder / f"{hemi}.planted.label.gii")
    return folder / "lh.planted.label.gii"


def _quiet_transformers() -> None:
    """Hide transformers' per-file progress bars; brainalign shows its own."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def run_demo(out_dir: str | Path = "brainalign-demo", quick: bool = False) -> Path:
    """Run the demo into ``out_dir`` and return the path of its HTML report.

    Also writes ``demo_timings.json`` there: the wall time of each stage (training,
    simulation, sweep, internal states, the rest of the report) and the process's peak
    RSS so far.
    """
    import yaml

    from .sweep import run
    from .sweep.analyze import internal_state_curves, report
    from .training import train_tiny

    _quiet_transformers()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    clock = [t0]

    def lap(name: str) -> None:
        now = time.perf_counter()
        stages[name] = round(now - clock[0], 2)
        clock[0] = now

    corpus = training_corpus_dir()
    train = QUICK_TRAIN if quick else DEMO_TRAIN
    n_ck = len(_checkpoint_steps(train))
    print(f"[1/4] training a tiny GPT-NeoX ({train['n_layers']} layers, hidden {train['hidden']}) for {train['steps']} steps "
          f"({train['steps'] * train['batch_size'] * train['seq_len'] / 1e3:.0f}k tokens), {n_ck} log-spaced checkpoints from "
          f"step 0, on the training corpus {corpus} (disjoint from the stimulus stories)", flush=True)
    tr = train_tiny(corpus, out / "tiny-gpt-neox", **train, overwrite=True)
    lap("train")
    cfg = demo_config(out, tr.out_dir, quick=quick)
    print("[1b] simulating fMRI to the stimulus stories (datasets/stories), driven by MiniLM layer 3 in planted regions",
          flush=True)
    from .sweep.config import load_config
    from .sweep.run import load_dataset

    dataset = load_dataset(load_config(cfg))  # the sweep below reuses this in-process
    cfg["rois"]["atlas"] = str(write_ground_truth_atlas(dataset, out / "atlas"))
    (out / "config.yaml").write_text(_config_header(tr, corpus) + yaml.safe_dump(cfg, sort_keys=False))
    lap("simulate")
    print(f"[2/4] sweep: {len(tr.checkpoints)} checkpoints x all layers x subjects, sign-randomisation tests "
          f"(config: {out / 'config.yaml'})", flush=True)
    from .sweep.store import IncompatibleStoreError

    try:
        sweep = run(cfg)
    except IncompatibleStoreError:  # the demo's own store, made by another version of the demo: start it over
        print(f"      the results store in {out} was made with other demo settings: starting it over", flush=True)
        sweep = run(cfg, force=True)
    lap("sweep")
    print("[3/4] curves, phases (gated by the tests), internal states, thresholded maps, movie", flush=True)
    internal_state_curves(sweep.path)  # cached: the report below reads it back
    lap("internal_states")
    path = report(sweep.path, out / "report.html", figures_dir=out / "figures")
    lap("report")
    total = time.perf_counter() - t0
    (out / "demo_timings.json").write_text(json.dumps(
        {"quick": quick, "total_s": round(total, 2), "stages_s": stages, "peak_rss_mb": _peak_rss_mb(),
         "checkpoints": len(tr.checkpoints), "train": train, "corpus": str(corpus)}, indent=1))
    print(f"[4/4] done in {total:.0f} s", flush=True)
    return path


def _checkpoint_steps(train: dict) -> list[int]:
    from .training.tiny import checkpoint_steps

    return checkpoint_steps(train["steps"], train["checkpoints"])


def _config_header(tr, corpus: Path) -> str:
    """YAML comments above the demo's config: what the model was trained on."""
    c = json.loads((tr.out_dir / "training_log.json").read_text()).get("corpus", {})
    return (f"# brainalign demo. model: a tiny GPT-NeoX trained by `brainalign demo` on {corpus}\n"
            f"# ({c.get('documents', '?')} texts, {c.get('words', '?')} words; no text in common with the stimulus stories\n"
            f"# of datasets/stories), {len(tr.checkpoints)} checkpoints; train / held-out loss per checkpoint:\n"
            f"# {tr.out_dir / 'training_log.json'}\n")


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
