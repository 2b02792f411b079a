"""Where independent units of work run: inline, in a local process pool, or on a Ray cluster.

``difflens experiment`` is a grid of cells (organism × mixing ratio; organism × agent setting). Each
cell is resumable on its own (it is an ordinary run directory), so cells can run anywhere that sees
the same output directory. An :class:`Executor` runs ``fn(item)`` for every item and yields one
:class:`Outcome` per item **as it finishes**; the driver merges outcomes and writes the result file
(atomically, after every cell), exactly as the sequential loop does.

- ``local`` (default), ``workers=1``: inline, in this process, in order — today's sequential
  behaviour exactly (an unexpected exception propagates, as before).
- ``local``, ``workers=N>1``: a :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn``
  start method (no forked torch/OpenMP state); a cell that raises is recorded as an error, the
  others go on.
- ``ray``: one ``ray.remote`` task per item on the cluster at ``address`` (``"auto"``: the running
  cluster; None: a local one started here), ``num_cpus`` / ``num_gpus`` per task; a task that
  raises (or whose worker dies after Ray's retries) is recorded as an error.

For the pool and Ray, ``fn`` must be a top-level (importable, picklable) function and the items
plain data; the result must be picklable too. Nothing here imports Ray unless it is chosen; a
missing Ray is a :class:`~difflens.errors.ConfigError` naming the extra to install, raised before
any work starts.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

from .errors import ConfigError

__all__ = ["EXECUTORS", "Outcome", "Executor", "LocalExecutor", "RayExecutor", "make_executor", "require_ray"]

EXECUTORS = ("local", "ray")
FORWARDED_ENV = ("DIFFLENS_HOME", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
"""Environment variables the driver passes to Ray tasks (``runtime_env``) unless ``init_kwargs`` sets one."""

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Outcome(Generic[R]):
    """The result of one item: ``value`` or ``error`` (``"Type: message"``), by the item's ``index``."""

    index: int
    value: R | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class Executor:
    """Runs ``fn`` over items; see the module docstring."""

    name = "executor"

    @property
    def parallel(self) -> bool:
        """Whether items may run outside this process (then ``fn`` must be picklable)."""
        return True

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[Outcome[R]]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class LocalExecutor(Executor):
    """Inline for one worker, a spawn-context process pool for more."""

    name = "local"

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise ConfigError(f"--workers must be ≥ 1, got {workers}.")
        self.workers = int(workers)

    @property
    def parallel(self) -> bool:
        return self.workers > 1

    def describe(self) -> str:
        return f"local ({self.workers} worker{'s' if self.workers != 1 else ''})"

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[Outcome[R]]:
        items = list(items)
        if self.workers == 1:
            for i, item in enumerate(items):
                yield Outcome(i, fn(item))
            return
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=min(self.workers, len(items)), mp_context=ctx) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            for fut in cf.as_completed(futures):
                i = futures[fut]
                try:
                    yield Outcome(i, fut.result())
                except Exception as e:  # noqa: BLE001 - one failing cell must not lose the others
                    yield Outcome(i, error=_describe(e))


def require_ray() -> Any:
    """The ``ray`` module, or a ConfigError that names the extra to install."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError("--executor ray needs Ray, which is not installed: pip install 'difflens[ray]' "
                          f"(or pip install 'ray>=2.9'); ({e})") from None
    return ray


class RayExecutor(Executor):
    """One Ray task per item (see the module docstring).

    ``address``: ``"auto"`` joins the cluster this machine belongs to (``ray start --head`` / a Ray
    job); ``"ray://host:10001"`` a remote one through Ray Client; None starts (or reuses) a local
    Ray instance. ``init_kwargs`` go to ``ray.init`` (e.g. ``num_cpus`` for a local test cluster,
    ``runtime_env``). ``num_cpus`` / ``num_gpus`` are the resources each task reserves: a cell that
    loads a model pair on a GPU should ask for ``num_gpus=1``.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: float = 1, num_gpus: float = 0,
                 max_retries: int = 1, init_kwargs: dict[str, Any] | None = None):
        if num_cpus < 0 or num_gpus < 0:
            raise ConfigError("resources per Ray task must be ≥ 0.")
        self.ray = require_ray()
        self.address = address
        self.num_cpus, self.num_gpus = float(num_cpus), float(num_gpus)
        self.max_retries = int(max_retries)
        self.init_kwargs = dict(init_kwargs or {})

    def describe(self) -> str:
        return f"ray ({self.address or 'local instance'}, {self.num_cpus:g} CPU / {self.num_gpus:g} GPU per cell)"

    def _ensure_init(self) -> None:
        if not self.ray.is_initialized():
            kw = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": True, **self.init_kwargs}
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            if env and "runtime_env" not in kw:  # cells find the same model cache and offline switches
                kw["runtime_env"] = {"env_vars": env}
            try:
                self.ray.init(address=self.address, **kw)
            except ConnectionError as e:
                raise ConfigError(f"could not connect to the Ray cluster at {self.address!r}: {e}. Start one with "
                                  "`ray start --head` (then --address auto), or leave --address out for a local "
                                  "instance.") from None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[Outcome[R]]:
        items = list(items)
        if not items:
            return
        self._ensure_init()
        ray = self.ray
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries)(fn)
        refs = {task.remote(item): i for i, item in enumerate(items)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                i = refs[ref]
                try:
                    yield Outcome(i, ray.get(ref))
                except Exception as e:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, …
                    cause = getattr(e, "cause", None)
                    yield Outcome(i, error=_describe(cause) if isinstance(cause, BaseException) else
                                  _describe(e).splitlines()[0])


def make_executor(name: str = "local", *, workers: int = 1, address: str | None = None, num_cpus: float = 1,
                  num_gpus: float = 0, init_kwargs: dict[str, Any] | None = None) -> Executor:
    """The executor named by ``--executor`` (checked, and Ray imported, before any work)."""
    if name == "local":
        if address is not None:
            raise ConfigError("--address applies to --executor ray only.")
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(address, num_cpus=num_cpus, num_gpus=num_gpus, init_kwargs=init_kwargs)
    raise ConfigError(f"unknown executor {name!r}: choose from {', '.join(EXECUTORS)}.")
