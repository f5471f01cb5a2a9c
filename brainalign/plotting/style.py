"""Figure defaults fit for a paper: small fonts, thin lines, colour-blind safe colours."""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["OKABE_ITO", "PAPER_RC", "paper_style", "palette", "line_styles"]

#: Okabe & Ito (2008) colour-blind safe palette (black first is left out: it is the text colour)
OKABE_ITO = (
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#F0E442",  # yellow
    "#000000",  # black
)

#: matplotlib settings used by every brainalign figure
PAPER_RC = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.linewidth": 0.8,
    "lines.linewidth": 1.4,
    "xtick.major.width": 0.8,
    "ytick.major.width": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # editable text in vector files
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "image.cmap": "viridis",
}


def palette(n: int) -> list[str]:
    """``n`` colours from the Okabe-Ito palette (cycled beyond 8)."""
    return [OKABE_ITO[i % len(OKABE_ITO)] for i in range(n)]


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Context manager applying :data:`PAPER_RC` and the Okabe-Ito colour cycle."""
    import matplotlib as mpl
    from cycler import cycler

    rc = dict(PAPER_RC)
    rc["axes.prop_cycle"] = cycler(color=list(OKABE_ITO))
    with mpl.rc_context(rc):
        yield


#: line styles that tell curves apart once the 8 colours are used up
_DASHES = ("-", "--", ":", "-.")


def line_styles(n: int) -> list[tuple[str, str]]:
    """``n`` distinct (colour, linestyle) pairs: the Okabe-Ito colours with solid lines,
    then the same colours dashed, dotted and dash-dotted (so 14 ROIs stay 14 curves)."""
    k = len(OKABE_ITO)
    return [(OKABE_ITO[i % k], _DASHES[(i // k) % len(_DASHES)]) for i in range(n)]
