"""Figures: cortical flatmaps, inflated views, training movies and curves over training.

Everything draws on matplotlib ``Figure`` objects without pyplot, so it runs headless
(Agg) and returns the figure; functions with ``out=`` also write it (PNG/SVG/PDF).
"""

from .curves import (
    plot_aligned_curves,
    plot_curves,
    plot_curves_grid,
    plot_layer_heatmap,
    plot_layer_heatmaps,
    plot_llc_traces,
    plot_subject_curves,
)
from .flat import FlatmapFigure, flat_coordinates, flatmap, flatmap_movie, save_figure, subject_flatmap, surface_views
from .style import OKABE_ITO, PAPER_RC, line_styles, palette, paper_style

__all__ = [
    "flatmap",
    "subject_flatmap",
    "surface_views",
    "flatmap_movie",
    "flat_coordinates",
    "FlatmapFigure",
    "save_figure",
    "plot_curves",
    "plot_curves_grid",
    "plot_subject_curves",
    "plot_layer_heatmap",
    "plot_layer_heatmaps",
    "plot_aligned_curves",
    "plot_llc_traces",
    "OKABE_ITO",
    "PAPER_RC",
    "palette",
    "line_styles",
    "paper_style",
]
