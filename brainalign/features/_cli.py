"""``brainalign cache info`` / ``brainalign cache clear``: the on-disk feature cache."""

from __future__ import annotations

import argparse


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _info(args: argparse.Namespace) -> int:
    from .cache import FeatureCache

    cache = FeatureCache(args.root) if args.root else FeatureCache()
    rows = cache.info()
    print(f"feature cache: {cache.root}")
    if not rows:
        print("  (empty)")
        return 0
    total = 0
    for r in rows:
        total += r["bytes"]
        datasets = ",".join(r["datasets"]) or "-"
        print(f"  {r['model']}@{r['revision'] or 'default'}  [{r['settings']}]  {datasets}: "
              f"{r['stories']} stories, {_human(r['bytes'])}")
    print(f"total: {_human(total)} in {len(rows)} entries")
    return 0


def _clear(args: argparse.Namespace) -> int:
    from .cache import FeatureCache

    cache = FeatureCache(args.root) if args.root else FeatureCache()
    freed = cache.clear(model=args.model, revision=args.revision)
    what = "everything" if not (args.model or args.revision) else f"model={args.model} revision={args.revision}"
    print(f"feature cache {cache.root}: cleared {what}, freed {_human(freed)}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("cache", help="the on-disk language-model feature cache")
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])
    pi = sub.add_parser("info", help="what is cached: model, revision, stories, size")
    pi.add_argument("--root", help="cache folder (default: $BRAINALIGN_CACHE/features)")
    pi.set_defaults(func=_info)
    pc = sub.add_parser("clear", help="delete cached features (all, or one model / revision)")
    pc.add_argument("--model", help="only this model (hub id or folder)")
    pc.add_argument("--revision", help="only this revision")
    pc.add_argument("--root", help="cache folder (default: $BRAINALIGN_CACHE/features)")
    pc.set_defaults(func=_clear)
