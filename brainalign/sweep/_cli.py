"""``brainalign run``, ``brainalign report``, ``brainalign flatmap``, ``brainalign train-tiny``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from .analyze import report
    from .run import run

    sweep = run(args.config, force=args.force, executor=args.executor, workers=args.workers)
    print(f"results: {sweep.path}")
    if not args.no_report:
        out = report(sweep.path, args.report or Path(sweep.path).with_suffix(".html"))
        print(f"report: {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .analyze import report

    print(report(args.results, args.output, figures_dir=args.figures))
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
    p.add_argument("--executor", choices=["local", "dask", "slurm"], help="override executor.kind")
    p.add_argument("--workers", type=int, help="number of Dask workers (or SLURM jobs)")
    p.add_argument("--report", help="where to write the HTML report (default: next to the store)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    p.set_defaults(func=_run)

    p = sub.add_parser("report", help="one self-contained HTML report of a results store")
    p.add_argument("results", help="results store (.zarr)")
    p.add_argument("-o", "--output", default="report.html")
    p.add_argument("--figures", help="also write each figure to this folder")
    p.set_defaults(func=_report)

    p = sub.add_parser("flatmap", help="a cortical flatmap of one checkpoint and layer of a results store")
    p.add_argument("results", help="results store (.zarr)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--subject", help="one subject (default: the subject mean)")
    p.add_argument("--threshold", type=float, help="hide |score| below this")
    p.add_argument("-o", "--output", default="flatmap.png")
    p.set_defaults(func=_flatmap)

    # the tiny trainer (brainalign.training) makes the checkpoints sweeps read
    from ..training._cli import register_train_tiny

    register_train_tiny(sub)
