"""Figures: cortical flatmaps, inflated views, training movies and curves over training.

Everything draws on matplotlib ``Figure`` objects without pyplot, so it runs headless
(Agg) and returns the figure; functions with ``out=`` also write it (PNG/SVG/PDF).
"""

from .curves import plot_aligned_curves, plot_curves, plot_layer_heatmap
from .flat import FlatmapFigure, flat_coordinates, flatmap, flatmap_movie, save_figure, subject_flatmap, surface_views
from .style import OKABE_ITO, PAPER_RC, palette, paper_style

__all__ = [
    "flatmap",
    "subject_flatmap",
    "surface_views",
    "flatmap_movie",
    "flat_coordinates",
    "FlatmapFigure",
    "save_figure",
    "plot_curves",
    "plot_layer_heatmap",
    "plot_aligned_curves",
    "OKABE_ITO",
    "PAPER_RC",
    "palette",
    "paper_style",
]
