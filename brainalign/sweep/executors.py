"""Executors: how a sweep runs the checkpoints it has still to do. One registry.

An executor is a function ``run(plan, todo, *, progress, workers) -> list[dict]`` that
runs :func:`brainalign.sweep.run_checkpoint` ``(plan, i)`` once for each index ``i`` in
``todo`` (in any order, anywhere: each task writes its own region of the store and marks
itself done) and returns what those calls returned. ``workers`` is the ``--workers``
override (None: the config's ``executor.workers``). It runs inside the store's writer
lock, after the store was created, and must not return before every task finished.

:data:`EXECUTORS` maps ``executor.kind`` names to :class:`Executor` entries;
:func:`register_executor` adds one. The config (``executor.kind``), ``brainalign run
--executor`` and :func:`brainalign.sweep.run` accept exactly the registered names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from .config import ExecutorConfig
    from .run import Plan

__all__ = ["Executor", "EXECUTORS", "register_executor", "executor", "slurm_cluster"]

RunTasks = Callable[..., "list[dict]"]


@dataclass(frozen=True)
class Executor:
    """One registered executor.

    Attributes
    ----------
    name : str
        The ``executor.kind`` that selects it.
    run : callable
        ``run(plan, todo, *, progress, workers) -> list[dict]`` (see the module docstring).
    describe : callable, optional
        ``describe(executor_config) -> str``: where the tasks run, for ``--dry-run``.
    check : callable, optional
        ``check() -> None``: raises :class:`~brainalign.ValidationError` when this machine
        cannot run it (called before any work).
    dry_run : callable, optional
        ``dry_run(executor_config) -> str``: more for ``--dry-run`` to print (a job script).
    """

    name: str
    run: RunTasks
    describe: Callable[["ExecutorConfig"], str] | None = None
    check: Callable[[], None] | None = None
    dry_run: Callable[["ExecutorConfig"], str] | None = None


def _run_local(plan: "Plan", todo: list[int], *, progress: bool, workers: int | None = None) -> list[dict]:
    """Each task in turn, in this process; hub revisions' weights are fetched when a task
    needs them (features not all cached; from then on the next ones are prefetched) and
    freed after it (``weights:``)."""
    from tqdm.auto import tqdm

    from .run import run_checkpoint, weight_stream

    out = []
    with weight_stream(plan) as ws:
        revs = [plan.checkpoints[i].revision for i in todo]
        ws.free_unscheduled(revs)  # what a killed run fetched for checkpoints done since
        for k, i in enumerate(tqdm(todo, desc="checkpoints", unit="ckpt", disable=not progress)):

            def fetch(k=k):
                ws.schedule(revs[k:])
                ws.acquire(revs[k])

            out.append(run_checkpoint(plan, i, before_load=fetch))
            ws.done(revs[k])
    return out


def _fit_after(plan: "Plan", index: int, extracted: dict) -> dict:
    """The fits of a checkpoint whose features a separate task put in the cache; a
    feature cache this worker does not share with that task is an error, not a second
    extraction (with a model download) on a fits worker."""
    from ..errors import ValidationError
    from .run import run_checkpoint

    def refuse():
        from ..config import cache_dir

        raise ValidationError(
            f"checkpoint {plan.checkpoints[index].label}: its features are not in this worker's feature cache "
            f"({cache_dir()}); with executor.stages: separate every worker must share one $BRAINALIGN_CACHE")

    return run_checkpoint(plan, index, before_load=refuse)


def _with_weights(plan: "Plan", index: int) -> dict:
    """One whole checkpoint task, its weights fetched and freed around it."""
    from .run import run_checkpoint, weight_stream

    rev = plan.checkpoints[index].revision
    with weight_stream(plan, prefetch=0) as ws:
        out = run_checkpoint(plan, index, before_load=lambda: ws.acquire(rev))
        ws.done(rev)
    return out


def run_on_client(plan: "Plan", todo: list[int], *, progress: bool, client=None, cluster=None,
                  resources: dict | None = None) -> list[dict]:
    """The tasks as Dask futures on ``client`` (or on a client of ``cluster``, closed after).

    With ``executor.stages: separate``, each checkpoint is two tasks: its features
    (:func:`~brainalign.sweep.run.extract_checkpoint`, asking for ``resources``) and its
    fits, which wait for them and read them from the shared feature cache. Each task
    fetches and frees its own weights (``weights:``; the budget holds per worker)."""
    from distributed import Client, as_completed
    from tqdm.auto import tqdm

    from .run import extract_checkpoint

    own = client is None
    if own:
        client = Client(cluster)
    try:
        key = {i: f"{plan.checkpoints[i].label}-{plan.settings_hash}" for i in todo}
        if plan.config.executor.stages == "separate":
            # features on the workers that offer the resources (GPUs), fits wherever
            feats = {i: client.submit(extract_checkpoint, plan, i, key=f"features-{key[i]}", resources=resources,
                                      pure=False) for i in todo}
            futures = [client.submit(_fit_after, plan, i, feats[i], key=f"fits-{key[i]}", pure=False) for i in todo]
        else:
            futures = [client.submit(_with_weights, plan, i, key=f"checkpoint-{key[i]}", resources=resources,
                                     pure=False) for i in todo]
        out = []
        for fut in tqdm(as_completed(futures), total=len(futures), desc="checkpoints", unit="ckpt", disable=not progress):
            out.append(fut.result())
        return out
    finally:
        if own:
            client.close()


def gpu_resources(plan: "Plan") -> dict | None:
    """Dask resources each task asks for: one ``GPU`` when SLURM jobs have GPUs."""
    ex = plan.config.executor
    return {"GPU": 1} if ex.kind == "slurm" and ex.slurm.gpus > 0 else None


def _run_dask(plan: "Plan", todo: list[int], *, progress: bool, workers: int | None = None) -> list[dict]:
    """A local Dask cluster of ``workers`` processes, one thread each."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=workers or plan.config.executor.workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, host="127.0.0.1")
    try:
        return run_on_client(plan, todo, progress=progress, cluster=cluster)
    finally:
        cluster.close()


def slurm_cluster(executor: "ExecutorConfig") -> Any:
    """A dask-jobqueue ``SLURMCluster`` from ``executor.slurm`` settings (not yet scaled).

    One worker process per job; with GPUs, each job asks for them (``--gres``) and its
    worker offers one ``GPU`` resource, so each worker runs one GPU task at a time.
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:  # pragma: no cover
        raise ValidationError("executor.kind: slurm needs dask-jobqueue: pip install 'brainalign[dask]'") from exc
    s = executor.slurm
    extra = list(s.job_extra_directives)
    worker_args: list[str] = []
    if s.gpus:
        extra.append(f"--gres=gpu:{s.gpus}")
        worker_args = ["--resources", "GPU=1"]
    return SLURMCluster(
        queue=s.queue, cores=s.cores, memory=s.memory, walltime=s.walltime, processes=1,
        job_extra_directives=extra, worker_extra_args=worker_args, scheduler_options=dict(s.scheduler_options),
    )


def _run_slurm(plan: "Plan", todo: list[int], *, progress: bool, workers: int | None = None) -> list[dict]:
    """SLURM jobs (``executor.slurm``; ``workers`` of them, else ``slurm.jobs``), one Dask worker each."""
    ex = plan.config.executor
    cluster = slurm_cluster(ex)
    try:
        cluster.scale(jobs=workers or ex.slurm.jobs)
        return run_on_client(plan, todo, progress=progress, cluster=cluster, resources=gpu_resources(plan))
    finally:
        cluster.close()


def _slurm_job_script(ex: "ExecutorConfig") -> str:
    cluster = slurm_cluster(ex)  # starts a Dask scheduler here, submits nothing
    try:
        return "SLURM job script:\n" + cluster.job_script()
    finally:
        cluster.close()


def _check_slurm() -> None:
    from .config import check_slurm_available

    check_slurm_available()


#: executor.kind -> Executor; the built-in ones
EXECUTORS: dict[str, Executor] = {}


def register_executor(name: str, run: RunTasks, *, describe: Callable[["ExecutorConfig"], str] | None = None,
                      check: Callable[[], None] | None = None,
                      dry_run: Callable[["ExecutorConfig"], str] | None = None) -> Executor:
    """Register ``run`` as the executor ``executor.kind: name`` (replacing one of that name).

    Returns the :class:`Executor` entry.

    Raises
    ------
    ValidationError
        A name that is not a non-empty string, or ``run`` not callable.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"register_executor(): name must be a non-empty string, got {name!r}")
    if not callable(run):
        raise ValidationError(f"register_executor({name!r}): run must be callable, got {type(run).__name__}")
    entry = Executor(name, run, describe, check, dry_run)
    EXECUTORS[name] = entry
    return entry


def executor(name: str) -> Executor:
    """The registered executor ``name``.

    Raises
    ------
    ValidationError
        Naming the registered ones.
    """
    try:
        return EXECUTORS[name]
    except KeyError:
        raise ValidationError(f"unknown executor {name!r}; registered: {', '.join(EXECUTORS)}") from None


register_executor("local", _run_local, describe=lambda ex: "in this process")
register_executor("dask", _run_dask, describe=lambda ex: f"{ex.workers} Dask workers")
register_executor("slurm", _run_slurm, describe=lambda ex: f"{ex.slurm.jobs} SLURM jobs", check=_check_slurm,
                  dry_run=_slurm_job_script)
