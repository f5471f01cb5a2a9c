"""Cortical surfaces: fsaverage meshes, the medial wall, resampling, and atlases.

``brainalign.rois`` is the user-facing entry point for atlases and ROI aggregation;
this package holds the geometry they rest on.
"""

from .meshes import MESH_KINDS, Mesh, load_mesh, medial_wall, resample, space_of_size, sulcal_depth, surface_space_name

__all__ = [
    "MESH_KINDS",
    "Mesh",
    "load_mesh",
    "medial_wall",
    "resample",
    "space_of_size",
    "sulcal_depth",
    "surface_space_name",
]
