"""``brainalign score``: one model under a named protocol, a result card."""

from __future__ import annotations

import argparse


def _score(args: argparse.Namespace) -> int:
    from .protocols import score

    card = score(args.model, dataset=args.dataset, root=args.root, subjects=args.subjects, protocol=args.protocol,
                 revision=args.revision, out=args.out, baseline=not args.no_baseline,
                 trust_remote_code=args.trust_remote_code)
    print(f"protocol {card['protocol']['name']} (key {card['protocol']['key']}), model {card['model']['name']}"
          + (f" @ {card['model']['revision']}" if card["model"]["revision"] else ""))
    print(f"{'ROI':28s} {'layer':>5s} {'depth':>5s} {'r':>8s} {'95% interval':>20s} {'p':>9s}"
          + ("  random init" if card["baselines"] else ""))
    base = card["baselines"].get("random_init", {}).get("best", {})
    for roi, b in card["best"].items():
        iv = f"[{b['lo']:.4f}, {b['hi']:.4f}]" if b["lo"] is not None else "-"
        p = f"{b['p']:.2g}" if b["p"] is not None else "-"
        extra = f"  {base[roi]['score']:.4f}" if roi in base and base[roi]["score"] is not None else ""
        print(f"{roi:28s} {b['layer']:5d} {b['depth']:5.2f} {b['score']:8.4f} {iv:>20s} {p:>9s}{extra}")
    for name, b in card["baselines"].items():
        parts = [f"{k.replace('_', ' ')} r = {v['score']:.4f}" for k, v in b["summary"].items() if v.get("score") is not None]
        print(f"baseline {name.replace('_', ' ')}: " + ", ".join(parts))
    print(f"\ncard: {args.out}/card.json")
    return 0


def register(sub) -> None:
    p = sub.add_parser("score", help="score one model under a versioned protocol; writes a result card")
    p.add_argument("model", help="a Hugging Face model id or a local folder")
    p.add_argument("--revision", help="hub revision (e.g. step1000) or checkpoint subfolder (default: the last)")
    p.add_argument("--dataset", help="dataset name (picks its newest protocol when --protocol is not given)")
    p.add_argument("--root", help="the dataset's folder")
    p.add_argument("--subjects", nargs="+", help="subjects (default: the protocol's / all)")
    p.add_argument("--protocol", help="protocol name, e.g. lebel2023-v1")
    p.add_argument("-o", "--out", default="brainalign-score", help="output folder (default: %(default)s)")
    p.add_argument("--no-baseline", action="store_true", help="skip the random-init baseline")
    p.add_argument("--trust-remote-code", action="store_true", help="run model code from the hub (off by default)")
    p.set_defaults(func=_score)
    register_more(sub)


def _compare(args: argparse.Namespace) -> int:
    from .protocols import compare

    table = compare(*args.cards)
    with __import__("pandas").option_context("display.width", 160, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"\ntable: {args.out}")
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from .protocols import leaderboard

    table = leaderboard(args.folder, args.out)
    where = args.out or args.folder
    print(f"{len(table)} cards; {where}/leaderboard.html and {where}/leaderboard.md")
    return 0


def register_more(sub) -> None:
    p = sub.add_parser("compare", help="models side by side: paired differences of their cards' ROI scores")
    p.add_argument("cards", nargs="+", help="card folders (or card.json files); the first is the reference")
    p.add_argument("-o", "--out", help="also write the table as CSV")
    p.set_defaults(func=_compare)
    p = sub.add_parser("leaderboard", help="every card under a folder as HTML and Markdown tables")
    p.add_argument("folder")
    p.add_argument("-o", "--out", help="output folder (default: FOLDER)")
    p.set_defaults(func=_leaderboard)
