"""``brainalign demo``: the whole pipeline, offline, on embedded data, in minutes.

1. Simulated story-listening fMRI on fsaverage5: the project's own stories with natural
   word timings, responses driven by a middle layer of the pretrained MiniLM in planted
   regions, AR(1) noise smooth across the cortex, a repeated test story.
2. A tiny GPT-NeoX trained on the same story corpus, with log-spaced checkpoints.
3. The sweep: every checkpoint x every layer x every subject, resumable zarr store.
4. ROI curves, phase detection, internal-state curves, flatmaps, a training movie and
   the HTML report.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["demo_config", "run_demo"]

#: simulated data the demo uses (and the sweep reloads, deterministically, by seed)
#: two held-out stories (~150 TRs): one 74-TR story leaves too few TRs for vertex-wise
#: significance to survive FDR over 20,484 vertices
DEMO_DATA = {"n_subjects": 3, "stories": None, "test_story": ["thelighthousekeeper", "thewatchmaker"],
             "space": "fsaverage5", "snr": 4.0, "seed": 0}
QUICK_DATA = {"n_subjects": 2, "stories": 5, "test_story": DEMO_DATA["test_story"], "space": "fsaverage5", "snr": 4.0,
              "seed": 0}
#: ~300k training tokens: past that the tiny model memorises the 4.6k-word corpus
#: (its held-out loss stalls while the training loss keeps falling)
DEMO_TRAIN = {"n_layers": 2, "hidden": 64, "heads": 4, "seq_len": 128, "steps": 150, "batch_size": 16,
              "checkpoints": 10, "weight_decay": 0.1}
QUICK_TRAIN = {"n_layers": 2, "hidden": 32, "heads": 2, "seq_len": 64, "steps": 40, "batch_size": 8, "checkpoints": 5}


def demo_config(out: Path, model_dir: Path, quick: bool = False) -> dict:
    """The sweep config of the demo (also a template for users' own runs)."""
    return {
        "dataset": {"name": "simulated", "options": dict(QUICK_DATA if quick else DEMO_DATA)},
        "model": {"name": str(model_dir)},
        "layers": "all",
        "features": {"context_tokens": 64 if quick else 128, "batch_size": 16},  # the model's own length
        "encoding": {"alphas": {"logspace": [0, 5, 11]}, "n_folds": 3 if quick else 5},
        "stats": {"test": "sign"},
        "rois": {"atlas": "language", "how": "mean"},
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
    """Run the demo into ``out_dir`` and return the path of its HTML report."""
    import yaml

    from .datasets import _corpus
    from .sweep import run
    from .sweep.analyze import report
    from .training import train_tiny

    _quiet_transformers()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/4] training a tiny GPT-NeoX on the story corpus ({_corpus.stories_dir()})", flush=True)
    tr = train_tiny(_corpus.stories_dir(), out / "tiny-gpt-neox", **(QUICK_TRAIN if quick else DEMO_TRAIN), overwrite=True)
    cfg = demo_config(out, tr.out_dir, quick=quick)
    print("[1b] simulating fMRI responses driven by MiniLM layer 3 in planted regions", flush=True)
    from .sweep.config import load_config
    from .sweep.run import load_dataset

    dataset = load_dataset(load_config(cfg))  # the sweep below reuses this in-process
    cfg["rois"]["atlas"] = str(write_ground_truth_atlas(dataset, out / "atlas"))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"[2/4] sweep: {len(tr.checkpoints)} checkpoints x all layers x subjects (config: {out / 'config.yaml'})", flush=True)
    sweep = run(cfg)
    print("[3/4] curves, phases, internal states, maps", flush=True)
    path = report(sweep.path, out / "report.html", figures_dir=out / "figures")
    print(f"[4/4] done in {time.perf_counter() - t0:.0f} s", flush=True)
    return path
