"""``brainalign plan CONFIG``: a sweep's size and predicted cost, before any work."""

from __future__ import annotations

import argparse


def _plan(args: argparse.Namespace) -> int:
    from .config import load_config
    from .cost import calibrate, estimate, format_estimate, gpu_rates, sweep_size
    from .run import make_plan

    plan = make_plan(load_config(args.config))
    size = sweep_size(plan)
    bandwidth = args.bandwidth * 1e6
    rates = gpu_rates(args.gpu, bandwidth=bandwidth) if args.gpu else calibrate(plan, size, bandwidth=bandwidth)
    print(format_estimate(estimate(size, rates), as_json=args.json))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .cost import GPUS

    p = sub.add_parser("plan", help="a sweep's size and predicted cost (time, disk, memory) before any work")
    p.add_argument("config", help="run config (YAML)")
    p.add_argument("--gpu", choices=sorted(GPUS), help="predict for this GPU (peak rates and stated efficiencies) "
                                                       "instead of calibrating on this machine")
    p.add_argument("--bandwidth", type=float, default=200.0, help="download rate in MB/s (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(func=_plan)
