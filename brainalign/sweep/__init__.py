"""Sweeps over checkpoints x layers x subjects: config, plan, resumable store, executors."""

from .config import RunConfig, config_hash, load_config
from .executors import EXECUTORS, Executor, register_executor
from .run import Checkpoint, Plan, Sweep, load_dataset, make_plan, resolve_checkpoints, run, run_checkpoint
from .store import IncompatibleStoreError, ResultsStore

__all__ = [
    "RunConfig",
    "load_config",
    "config_hash",
    "Checkpoint",
    "Plan",
    "Sweep",
    "make_plan",
    "load_dataset",
    "resolve_checkpoints",
    "run",
    "run_checkpoint",
    "ResultsStore",
    "EXECUTORS",
    "Executor",
    "register_executor",
    "IncompatibleStoreError",
]
