"""Cortical surfaces: fsaverage meshes, the medial wall, resampling, and atlases.

``brainalign.rois`` is the user-facing entry point for atlases and ROI aggregation;
this package holds the geometry they rest on. Subjects' own volumes and surfaces
(LeBel 2023's pycortex databases and FreeSurfer folders) and their projection to
fsaverage are in :mod:`brainalign.surfaces.subject` and :func:`project`.
"""

from .meshes import MESH_KINDS, Mesh, load_mesh, medial_wall, resample, space_of_size, sulcal_depth, surface_space_name
from .project import project, project_array
from .subject import SubjectSpace, read_surface

__all__ = [
    "MESH_KINDS",
    "Mesh",
    "load_mesh",
    "medial_wall",
    "resample",
    "space_of_size",
    "sulcal_depth",
    "surface_space_name",
    "project",
    "project_array",
    "SubjectSpace",
    "read_surface",
]
