"""Curves over training: phase-transition detection, internal-state metrics of the
model, downstream-task curves, and how their transitions line up."""

from .downstream import cooccurrence, downstream_curves, read_downstream_csv, read_lm_eval
from .internal import (
    head_scores,
    icl_score,
    internal_states,
    linear_cka,
    load_causal_lm,
    model_states,
    participation_ratio,
    twonn_dimension,
)
from .instructions import ifeval_curve, instruction_curve, instruction_following, probe_items
from .phases import PhaseResult, Segment, Transition, detect_phases

__all__ = [
    "PhaseResult",
    "cooccurrence",
    "downstream_curves",
    "read_downstream_csv",
    "read_lm_eval",
    "Segment",
    "Transition",
    "detect_phases",
    "head_scores",
    "icl_score",
    "ifeval_curve",
    "instruction_curve",
    "instruction_following",
    "probe_items",
    "internal_states",
    "linear_cka",
    "load_causal_lm",
    "model_states",
    "participation_ratio",
    "twonn_dimension",
]
