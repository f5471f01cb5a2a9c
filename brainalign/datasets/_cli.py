"""``brainalign datasets list`` and ``brainalign datasets check NAME ROOT``."""

from __future__ import annotations

import argparse
import inspect

from ..errors import ValidationError
from . import REGISTRY, adapter, available


def _list(args: argparse.Namespace) -> int:
    width = max(len(k) for k in REGISTRY)
    for name, text in available().items():
        print(f"{name:<{width}}  {text}")
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        mod = adapter(args.name)
    except ValidationError as exc:  # not registered
        print(exc)
        return 2
    if not hasattr(mod, "check"):
        print(f"{args.name}: nothing to check (generated on demand)")
        return 0
    if args.root is None:
        print(f"{args.name}: give the dataset folder: brainalign datasets check {args.name} ROOT")
        return 2
    subjects = args.subjects.split(",") if args.subjects else None
    kw = {}
    if args.space:
        if "space" not in inspect.signature(mod.check).parameters:
            print(f"{args.name}: --space does not apply (its data have one space)")
            return 2
        kw["space"] = args.space
    rep = mod.check(args.root, subjects=subjects, **kw)
    print(f"{args.name} at {args.root}")
    print(f"  present:        {len(rep['present'])} files")
    for key, label in (("not_downloaded", "not downloaded (git-annex pointers)"), ("missing", "missing")):
        items = rep[key]
        print(f"  {label}: {len(items)} files")
        for p in items[: args.max_list]:
            print(f"    {p}")
        if len(items) > args.max_list:
            print(f"    ... and {len(items) - args.max_list} more")
    for line in rep.get("problems", []):
        print(f"  problem: {line}")
    _print_stories(rep, args.max_list)
    if rep["ok"]:
        print("  everything needed is present")
        return 0
    if rep.get("command"):
        print("  get it with:")
        print(f"    {rep['command']}")
    return 1


def _print_stories(rep: dict, max_list: int) -> None:
    """Per subject: the stories it will load, from which scan, from which second (adapters that say)."""
    stories = rep.get("stories")
    if stories is not None:
        print(f"  stories per subject ({len(stories)} subjects): story <- scan, audio from second, TRs")
        for subj in list(stories)[:max_list]:
            print(f"    {subj}")
            for it in stories[subj]:
                rep_of = it["presentation"]
                rep_txt = f", presentation {rep_of[0]} of {rep_of[1]}" if rep_of[1] > 1 else ""
                onsets = ", ".join(f"{t:g}" for t in it["story_onsets"])
                print(f"      {it['story']} <- {it['scan']}: {it['audio']} from {it['zero']:g} s (story rows at "
                      f"{onsets} s), TRs {it['trs'][0]}-{it['trs'][1] - 1}{rep_txt}")
        if len(stories) > max_list:
            print(f"    ... and {len(stories) - max_list} more subjects (--max-list)")
    if rep.get("excluded"):
        print(f"  excluded by the dataset's exclusion list: {len(rep['excluded'])} scans")
    if rep.get("missing_transcripts"):
        print(f"  transcripts missing: {', '.join(rep['missing_transcripts'])}")


def register(subparsers) -> None:
    p = subparsers.add_parser("datasets", help="list datasets; check what of one is on disk")
    sub = p.add_subparsers(dest="datasets_command", metavar="ACTION")
    q = sub.add_parser("list", help="the datasets brainalign can read")
    q.set_defaults(func=_list)
    q = sub.add_parser("check", help="what is present, missing or not downloaded, and how to get it")
    q.add_argument("name", help="dataset name (see `brainalign datasets list`)")
    q.add_argument("root", nargs="?", help="dataset folder (the YAML file for `manifest`)")
    q.add_argument("--subjects", help="comma-separated subjects to check (default: all present)")
    q.add_argument("--space", help="surface named in the file names (narratives; default fsaverage6)")
    q.add_argument("--max-list", type=int, default=20, help="list at most this many files per group")
    q.set_defaults(func=_check)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
