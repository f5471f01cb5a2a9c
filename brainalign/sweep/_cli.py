"""``brainalign run``, ``brainalign report``, ``brainalign flatmap`` (assembled by :mod:`brainalign.cli`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def finite_float(text: str) -> float:
    """argparse ``type=``: a number that is not NaN or infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _dry_run(args: argparse.Namespace) -> int:
    """Validate the config and print what ``brainalign run`` would do, without doing it."""
    from .config import load_config
    from .executors import executor
    from .run import _reuse_store, make_plan
    from .store import ResultsStore

    cfg = load_config(args.config).with_executor(args.executor, args.workers)
    chosen = executor(cfg.executor.kind)
    if chosen.check is not None:
        chosen.check()
    plan = make_plan(cfg)
    store = ResultsStore(plan.store_path)
    store.check_target()  # a foreign folder or a read-only one is refused, as the run would
    writer = store.locked_by()
    resume = store.exists() and not args.force
    # a store made with other settings is refused, naming them, as the run would
    marked = _reuse_store(plan, store, args.force, dry_run=True)
    done = {c.label for c in plan.checkpoints if resume and store.done(c.label, marked)}
    state = "new" if not store.exists() else "exists; --force starts it over" if args.force else "exists; resumes it"
    print(f"config: {cfg.source}")
    print(f"store: {plan.store_path} ({state})")
    if writer:
        print(f"  now being written by {writer}: a run started now would be refused")
    print(f"model: {cfg.model.name}")
    print(f"checkpoints ({len(plan.checkpoints)}, {len(plan.checkpoints) - len(done)} to run):")
    for c in plan.checkpoints:
        print(f"  {c.label}" + ("  (done)" if c.label in done else ""))
    print(f"layers ({len(plan.layers)} of 0..{plan.n_layers}): {', '.join(map(str, plan.layers))}")
    print(f"subjects ({len(plan.subjects)}): {', '.join(plan.subjects)}")
    print(f"targets: {plan.n_targets} in {plan.space}; ROIs: {', '.join(plan.rois)}")
    if cfg.internal_states:
        llc = cfg.llc
        print(f"internal states, stored per checkpoint: {', '.join(cfg.internal_states)}"
              + (f" (LLC: {llc.chains} chain{'s' if llc.chains != 1 else ''} x {llc.draws} draws, lr {llc.lr}, seed {llc.seed})"
                 if "llc" in cfg.internal_states else ""))
    ex = cfg.executor
    print(f"executor: {ex.kind}" + (f" ({chosen.describe(ex)})" if chosen.describe is not None else ""))
    if chosen.dry_run is not None:
        print(chosen.dry_run(ex))
    print("dry run: nothing was computed or written")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    from .analyze import report
    from .config import load_config
    from .run import run

    sweep = run(args.config, force=args.force, executor=args.executor, workers=args.workers)
    print(f"results: {sweep.path}")
    if not args.no_report:
        cfg = load_config(args.config)
        where = args.report or cfg.output.report or Path(sweep.path).with_suffix(".html")
        figures = Path(cfg.output.figures).expanduser() if cfg.output.figures else None
        # the user's own config may grant remote code to the report of the run it just made
        out = report(sweep.path, Path(where).expanduser(), figures_dir=figures, trust_remote_code=cfg.model.trust_remote_code)
        print(f"report: {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .analyze import report

    print(report(args.results, args.output, figures_dir=args.figures, trust_remote_code=args.trust_remote_code))
    return 0


def _flatmap(args: argparse.Namespace) -> int:
    from .analyze import flatmap_from_store

    print(flatmap_from_store(args.results, checkpoint=args.checkpoint, layer=args.layer, subject=args.subject, out=args.output,
                             threshold=args.threshold))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run or resume a sweep from a YAML config")
    p.add_argument("config", help="run config (YAML)")
    p.add_argument("--force", action="store_true", help="discard a store made with other settings and start over")
    from .executors import EXECUTORS

    p.add_argument("--executor", choices=list(EXECUTORS), help="override executor.kind")
    p.add_argument("--workers", type=positive_int, help="number of Dask workers (or SLURM jobs)")
    p.add_argument("--report", help="where to write the HTML report (default: output.report, else next to the store)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config and print the plan (and the SLURM job script) without running anything")
    p.set_defaults(func=_run)

    p = sub.add_parser("report", help="one self-contained HTML report of a results store")
    p.add_argument("results", help="results store (.zarr)")
    p.add_argument("-o", "--output", default="report.html")
    p.add_argument("--figures", help="also write each figure to this folder")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code saved with the checkpoints to run (a store's own config cannot grant this)")
    p.set_defaults(func=_report)

    p = sub.add_parser("flatmap", help="a cortical flatmap of one checkpoint and layer of a results store")
    p.add_argument("results", help="results store (.zarr)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--subject", help="one subject (default: the subject mean)")
    p.add_argument("--threshold", type=finite_float, help="hide |score| below this")
    p.add_argument("-o", "--output", default="flatmap.png")
    p.set_defaults(func=_flatmap)
