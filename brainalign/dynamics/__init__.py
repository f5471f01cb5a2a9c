"""Curves over training: phase-transition detection, internal-state metrics of the
model, downstream-task curves, and how their transitions line up."""

from .phases import PhaseResult, Segment, detect_phases

__all__ = ["PhaseResult", "Segment", "detect_phases"]
