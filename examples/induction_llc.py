"""Induction heads form, and the local learning coefficient changes with them.

A 2-layer, 32-wide GPT-NeoX is trained on sequences that repeat a random segment
(``brainalign.training.InductionTask``: a random prefix, then a segment of 4-16 tokens
repeated to the end; the model sees fresh sequences every step). The script shows:

1. the induction-head score (attention from a repeated token to the token after its
   previous occurrence; best head of the best layer) rises in an s-shape over training,
   together with the previous-token score and the held-out accuracy on the repeats;
2. the local learning coefficient (LLC; devinterp SGLD, ``brainalign.dynamics.llc``)
   of each checkpoint changes at the same time: it climbs steeply while the circuit
   forms, peaks, and settles lower once it is in place;
3. ``detect_phases`` finds the transitions of each curve and ``cooccurrence`` puts a
   main transition of the LLC curve within 0.2 decade (of training tokens) of the step
   where the heads form (the induction score's first significant rise, where it leaves
   chance; on some seeds it rises a second time, by as much, as the heads sharpen):
   at the default seed the nearest, the LLC's peak, lies +0.02 decade from it, and the
   start of the LLC's steep climb -0.14 decade. Over training seeds 0-5 (the test's
   settings, 60 draws) the nearest main LLC transition lay 0.004-0.07 decade from the
   formation, and the held-out accuracy's jump 0.02-0.12 decade.

It prints each curve's transitions, the co-occurrence table and a final verdict line,
and renders ``docs/induction_llc.png``: the three curves on a log axis of training
tokens with their transitions, and a few SGLD loss traces (the chain diagnostics) at
an early and a late checkpoint.

These are the settings of the test ``test_llc_changes_when_induction_heads_form``
(tests/test_training_tasks.py), which checks the same 0.2-decade agreement.

Run (needs the devinterp extra, ``pip install 'brainalign[devinterp]'``, part of the
test extra)::

    MPLBACKEND=Agg .venv/bin/python examples/induction_llc.py
    .venv/bin/python examples/induction_llc.py --out /tmp/induction.png --draws 60 --seed 2

The run goes to ``--workdir`` (default ``~/.cache/brainalign/examples/induction_llc``);
a finished run there is reused, not retrained.

Runtime, measured with ``/usr/bin/time -v`` on 2 CPU cores (one of them busy with a
test run), from scratch with the default ``--draws 100``: 1 min 49 s wall time
(training 18 s, head scores 1 s, the LLC of 23 checkpoints x 2 chains x 100 draws
82 s), peak RSS 0.69 GB. The script runs torch on one thread (``--threads``): the
model is tiny, and on a busy CPU two threads made the LLC 4-5 times slower (11.5 min
for the same run), with the same numbers.

Caveat: the checkpoints are log-spaced (24 steps requested, 23 distinct), so the jump
happens between two neighbouring checkpoints about 0.13 decade apart; the transition
times are fitted within that gap, and their bootstrap intervals (from the residuals)
are narrower than the spacing. Hollow LLC markers: a chain that did not pass the
settle test of ``brainalign.dynamics.llc``; near initialisation the chains' loss rise
(a few thousandths) is about the size of the minibatch noise, so the relative test
fails there although the traces are flat.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # devinterp's and transformers' progress bars

import numpy as np

#: the settings of the test (and its induction_run fixture)
TASK = dict(vocab=32, seq_len=48)
TRAIN = dict(n_layers=2, hidden=32, heads=2, intermediate=4, steps=1000, batch_size=32, checkpoints=24,
             lr=3e-3, weight_decay=0.0)
WITHIN = 0.2  # decades of training tokens

INDUCTION, PREV, ACC, LLC = "induction-head score", "previous-token score", "held-out accuracy", "LLC"
COLOURS = {INDUCTION: "#c0392b", PREV: "#e59866", ACC: "#2471a3", LLC: "#1e8449"}


def compute(workdir: Path, draws: int, seed: int = 0) -> dict:
    """Train (or reuse) the run; head scores, accuracies and the LLC per checkpoint."""
    import xarray as xr

    from brainalign.dynamics.internal import model_states
    from brainalign.dynamics.llc import LLCSettings, llc_curve
    from brainalign.training import InductionTask, train_task

    task = InductionTask(**TASK)
    t0 = time.perf_counter()
    run = train_task(task, workdir / ("run" if seed == 0 else f"run-seed{seed}"), seed=seed, **TRAIN)
    ck = dict(run.checkpoints)
    print(f"trained: {len(ck)} checkpoints, {run.log[-1]['tokens']:.3g} tokens ({time.perf_counter() - t0:.0f} s)")

    t0 = time.perf_counter()
    states = model_states(ck, tokens=run.tokens)
    print(f"head scores ({time.perf_counter() - t0:.0f} s)")

    t0 = time.perf_counter()
    x = task.data(seed=7)["heldout"][0]  # 256 fresh sequences, as in the test
    settings = LLCSettings(draws=draws)
    with warnings.catch_warnings(record=True) as caught:  # unsettled chains: reported below, from `settled`
        warnings.simplefilter("always")
        llc = llc_curve(ck, x, settings, tokens=run.tokens)
    for w in caught:
        if "did not settle" not in str(w.message):
            warnings.warn(w.message, w.category, stacklevel=1)
    print(f"LLC: {len(ck)} checkpoints x {settings.chains} chains x {draws} draws ({time.perf_counter() - t0:.0f} s)")

    names = [r["name"] for r in run.log]
    coords = {"checkpoint": names, "tokens": ("checkpoint", [r["tokens"] for r in run.log])}

    def curve(values, name):
        return xr.DataArray(np.asarray(values, float), dims="checkpoint", coords=coords, name=name)

    return {
        INDUCTION: curve(states["induction_max"].max("layer").sel(checkpoint=names), INDUCTION),
        PREV: curve(states["prev_token_max"].max("layer").sel(checkpoint=names), PREV),
        ACC: curve([r["heldout_acc"] for r in run.log], ACC),
        LLC: curve(llc["llc"].sel(checkpoint=names), LLC),
        "llc_std": curve(llc["llc_std"].sel(checkpoint=names), "llc_std"),
        "llc_ds": llc, "settings": settings, "chance": 1 / TASK["vocab"], "n_sequences": len(x),
    }


def analyse(res: dict) -> tuple[dict, object]:
    """Phases of each curve (on checkpoints after step 0: log axis) and the
    co-occurrence table with the induction-head score as the reference."""
    from brainalign.dynamics.downstream import cooccurrence
    from brainalign.dynamics.phases import detect_phases

    phases = {k: detect_phases(res[k].where(res[k].tokens > 0, drop=True), x="tokens", name=k)
              for k in (INDUCTION, PREV, ACC, LLC)}
    table = cooccurrence({INDUCTION: phases[INDUCTION]}, {k: phases[k] for k in (LLC, ACC, PREV)})
    return phases, table


def main_transition(ph):
    """The largest significant rise, else the largest change."""
    ups = [t for t in ph.transitions if t.change > 0 and t.p < 0.05]
    pool = ups or ph.transitions
    return max(pool, key=lambda t: abs(t.change)) if pool else None


def formation(ph):
    """Where the induction heads form (the test's criterion): the induction score's
    first significant rise, where it leaves chance. On some seeds the score rises a
    second time, by as much, as the heads sharpen, after the accuracy has jumped with
    the first; so the largest rise would be the wrong one there. Else the largest change."""
    ups = [t for t in ph.transitions if t.change > 0 and t.p < 0.05]
    return min(ups, key=lambda t: t.log_at) if ups else main_transition(ph)


def report(res: dict, phases: dict, table) -> float:
    import pandas as pd

    ds = res["llc_ds"]
    print("\nper checkpoint")
    rows = pd.DataFrame({
        "tokens": res[INDUCTION].tokens.values, "induction": res[INDUCTION].values, "prev_token": res[PREV].values,
        "heldout_acc": res[ACC].values, "llc": res[LLC].values, "llc_std": res["llc_std"].values,
        "chains_settled": ds["settled"].sum("chain").values}, index=res[INDUCTION].checkpoint.values)
    with pd.option_context("display.width", 120, "display.float_format", "{:.3f}".format):
        print(rows.to_string(formatters={"tokens": "{:.3g}".format}))

    print("\ntransitions (log10 training tokens)")
    for k, ph in phases.items():
        main = formation(ph) if k == INDUCTION else main_transition(ph)
        for i, t in enumerate(ph.transitions, 1):
            lo, hi = t.log_interval
            print(f"  {k:22s} #{i}  {t.kind:10s} at {t.at:9.3g} tokens  log10 {t.log_at:.2f} [{lo:.2f}, {hi:.2f}]  "
                  f"{t.label:22s}  change {t.change:+.3g}  p = {t.p:.1g}"
                  + (("  <- formation" if k == INDUCTION else "  <- main") if t is main else ""))
        if not ph.transitions:
            print(f"  {k:22s} no transition")

    print(f"\nco-occurrence: nearest transition of each curve to each {INDUCTION} transition")
    show = table[["transition", "brain_tokens", "brain_change", "curve", "other_tokens", "other_change",
                  "distance_log10"]].rename(columns={"transition": "#", "brain_tokens": "induction_tokens",
                                                     "brain_change": "induction_change", "distance_log10": "decades"})
    with pd.option_context("display.width", 160, "display.max_colwidth", 40):
        print(show.to_string(index=False, formatters={"induction_tokens": "{:.3g}".format,
                                                      "other_tokens": "{:.3g}".format, "decades": "{:+.2f}".format}))

    main = formation(phases[INDUCTION])
    if main is None:
        print("\nthe induction-head score has no transition: the heads did not form")
        return float("nan")
    k = 1 + phases[INDUCTION].transitions.index(main)
    row = table[(table["transition"] == k) & (table["curve"] == LLC)].iloc[0]
    d = float(row["abs_distance_log10"])
    llc_ts = phases[LLC].transitions
    near = min(llc_ts, key=lambda t: abs(t.log_at - main.log_at)) if llc_ts else None
    # a main change of the LLC curve (its steep climb or its peak), not a wiggle
    major = near is not None and near.p < 0.05 and abs(near.change) >= 0.5 * max(abs(t.change) for t in llc_ts)
    ok = np.isfinite(d) and d < WITHIN and major
    print(f"\nthe LLC's transition nearest to the heads' formation (log10 {main.log_at:.2f}): "
          + (f"log10 {near.log_at:.2f}, {near.label}, {d:.2f} decade away, "
             f"{'a main change of the LLC curve' if major else 'not a main change of the LLC curve'}"
             if near is not None else "none"))
    print(f"LLC transition within {WITHIN} decade of the induction-head formation: {'yes' if ok else 'no'}")
    return d


def _sci(v: float) -> str:
    """3.2e+05 as mathtext 3.2 x 10^5."""
    m, e = f"{v:.1e}".split("e")
    return f"${m}\\times10^{{{int(e)}}}$"


def plot(res: dict, phases: dict, table, out: Path) -> None:
    import matplotlib

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.titlesize": 9.5, "axes.titleweight": "bold", "axes.titlelocation": "left",
                         "legend.frameon": False, "legend.fontsize": 8})
    keep = res[INDUCTION].tokens.values > 0  # step 0 has no place on a log axis
    tok = res[INDUCTION].tokens.values[keep]
    main = formation(phases[INDUCTION])

    fig = plt.figure(figsize=(7.2, 8.6), layout="constrained")
    gs = fig.add_gridspec(4, 2, height_ratios=[1.05, 0.85, 1.1, 0.9])
    axes = [fig.add_subplot(gs[0, :])]
    axes += [fig.add_subplot(gs[i, :], sharex=axes[0]) for i in (1, 2)]
    a_ind, a_acc, a_llc = axes

    def transitions(ax, key, ls="--"):
        for t in phases[key].transitions:
            ax.axvline(t.at, color=COLOURS[key], ls=ls, lw=1.1, alpha=0.9, zorder=1)

    for ax in axes:
        if main is not None:
            ax.axvspan(10 ** (main.log_at - WITHIN), 10 ** (main.log_at + WITHIN), color="0.92", zorder=0, lw=0)
        ax.set_xscale("log")
        ax.grid(axis="y", color="0.9", lw=0.6)

    # (a) head scores
    for key, mk in ((INDUCTION, "o"), (PREV, "s")):
        a_ind.plot(tok, res[key].values[keep], marker=mk, ms=3.5, lw=1.6, color=COLOURS[key], label=key, zorder=3)
        if phases[key].fitted is not None:
            a_ind.plot(phases[key].x, phases[key].fitted, color=COLOURS[key], lw=0.8, alpha=0.6, zorder=2)
        transitions(a_ind, key)
    a_ind.set_ylabel("attention score\n(best head)")
    a_ind.set_ylim(0, None)
    a_ind.legend(loc="upper left")
    a_ind.set_title("a   Induction heads form: s-shaped rise of the induction-head score")

    # (b) accuracy on the repeats
    a_acc.axhline(res["chance"], color="0.5", ls=":", lw=1)
    a_acc.text(tok[0], res["chance"] + 0.02, "chance (1/32)", color="0.4", fontsize=7.5, va="bottom")
    a_acc.plot(tok, res[ACC].values[keep], marker="o", ms=3.5, lw=1.6, color=COLOURS[ACC], zorder=3)
    transitions(a_acc, ACC)
    a_acc.set_ylabel("held-out accuracy\non repeats")
    a_acc.set_ylim(0, 1.02)
    a_acc.set_title("b   The model copies repeated segments once the heads are there")

    # (c) LLC with +-std over chains; hollow markers where a chain did not settle
    y, s = res[LLC].values[keep], res["llc_std"].values[keep]
    settled = res["llc_ds"]["settled"].all("chain").values[keep]
    a_llc.fill_between(tok, y - s, y + s, color=COLOURS[LLC], alpha=0.2, lw=0, zorder=2)
    a_llc.plot(tok, y, lw=1.6, color=COLOURS[LLC], zorder=3)
    a_llc.plot(tok[settled], y[settled], "o", ms=3.8, color=COLOURS[LLC], zorder=4)
    a_llc.plot(tok[~settled], y[~settled], "o", ms=3.8, mfc="white", mec=COLOURS[LLC], zorder=4)
    transitions(a_llc, LLC)
    if main is not None:
        transitions(a_llc, INDUCTION, ls=":")
    a_llc.set_ylabel(r"LLC $\hat\lambda$ (mean $\pm$ sd" + "\nover SGLD chains)")
    a_llc.set_xlabel("training tokens")
    a_llc.set_title("c   The local learning coefficient changes at the same time")
    st = res["settings"]
    handles = [Line2D([], [], color=COLOURS[LLC], marker="o", ms=3.8, label="LLC, chains settled"),
               Line2D([], [], color=COLOURS[LLC], marker="o", ms=3.8, mfc="white", label="a chain not settled"),
               Line2D([], [], color=COLOURS[LLC], ls="--", label="LLC transitions"),
               Line2D([], [], color=COLOURS[INDUCTION], ls=":", label="induction-head transitions")]
    a_llc.legend(handles=handles, loc="upper left")
    if main is not None:
        row = table[(table["transition"] == 1 + phases[INDUCTION].transitions.index(main)) & (table["curve"] == LLC)]
        d = float(row["distance_log10"].iloc[0])
        a_llc.annotate(f"nearest LLC transition: {d:+.2f} decade\nfrom the heads' formation\n"
                       f"(grey band: $\\pm${WITHIN} decade)", xy=(0.01, 0.36), xycoords="axes fraction",
                       ha="left", va="center", fontsize=7.5, color="0.25")
    for ax in (a_ind, a_acc):
        plt.setp(ax.get_xticklabels(), visible=False)

    # (d, e) SGLD loss traces: the last checkpoint before the jump, and the last one. Each
    # draw is the loss on one minibatch, so the trace cycles with the batches (8 of 32 of
    # the 256 sequences); the thick line is the mean over one such cycle.
    ds = res["llc_ds"]
    names = list(ds.checkpoint.values)
    before = [n for n, t in zip(names, ds.tokens.values) if 0 < t < (main.at if main is not None else np.inf)]
    picks = [(before[-1] if before else names[1], "before the jump"), (names[-1], "at the end")]
    cycle = max(1, res["n_sequences"] // st.batch_size)
    tr_axes = [fig.add_subplot(gs[3, 0])]
    tr_axes.append(fig.add_subplot(gs[3, 1], sharey=tr_axes[0]))
    for ax, (name, when), letter in zip(tr_axes, picks, "de"):
        d = ds.sel(checkpoint=name)
        draw = np.arange(1, d.sizes["draw"] + 1)
        for c, colour in zip(range(d.sizes["chain"]), ("#1e8449", "#7d3c98", "#b9770e", "#2e4053")):
            rise = d["loss_trace"].values[c] - float(d["init_loss"])
            smooth = np.convolve(rise, np.ones(cycle) / cycle, mode="valid")
            ax.plot(draw, rise, lw=0.5, color=colour, alpha=0.35)
            ax.plot(draw[cycle - 1:], smooth, lw=1.6, color=colour,
                    label=f"chain {c + 1}" + ("" if bool(d["settled"].values[c]) else " (not settled)"))
        ax.axhline(0, color="0.5", lw=0.8, ls=":")
        ax.set_title(f"{letter}   Chains {when} ({_sci(float(d.tokens))} tokens)", fontsize=9)
        ax.set_xlabel("SGLD draw")
        ax.text(0.98, 0.05, f"$\\hat\\lambda$ = {float(d['llc']):.2f} $\\pm$ {float(d['llc_std']):.2f}",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
        ax.legend(loc="upper left", fontsize=7)
        ax.grid(axis="y", color="0.9", lw=0.6)
    plt.setp(tr_axes[1].get_yticklabels(), visible=False)
    tr_axes[0].set_ylabel("SGLD loss rise\n" + r"$L(w) - L(w^*)$")
    fig.suptitle("Induction-head formation in a 2-layer transformer, and the local learning coefficient",
                 fontsize=10.5, fontweight="bold")
    fig.text(0.5, -0.005, f"SGLD: lr {st.lr:g}, n$\\beta$ {st.n_beta:g}, localization {st.localization:g}, "
             f"{st.chains} chains x {st.draws} draws, batch {st.batch_size}. Dashed lines: transitions found by "
             f"detect_phases.\nd, e: thin, the loss of each draw (one minibatch); thick, its mean over {cycle} draws "
             f"(one pass over the {res['n_sequences']} sequences).", ha="center", va="top", fontsize=7, color="0.35")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150, bbox_inches="tight")
    plt.close(fig)
    print(f"figure: {out}")


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=root / "docs" / "induction_llc.png", help="figure (PNG)")
    cache = Path.home() / ".cache" / "brainalign" / "examples" / "induction_llc"
    p.add_argument("--workdir", type=Path, default=cache,
                   help="where the training run goes (a finished run there is reused)")
    p.add_argument("--draws", type=int, default=100, help="SGLD draws per chain (the test uses 60)")
    p.add_argument("--seed", type=int, default=0, help="training seed (the test's: 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (the model is tiny: one is fastest; several are much slower on a busy CPU)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    res = compute(args.workdir.expanduser(), args.draws, args.seed)
    phases, table = analyse(res)
    report(res, phases, table)
    plot(res, phases, table, args.out)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
