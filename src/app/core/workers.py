"""A bounded pool of worker processes for per-row CPU work (imports).

Pure-Python work (parsing, validation, building COPY payloads) holds the GIL: in a
thread it still delays the event loop after every socket call; in another process it
does not. :class:`WorkerPool` owns one ``ProcessPoolExecutor`` started with the
``forkserver`` method: a fork of a process with a running loop and open database
connections would copy both into the child, so children come from a clean server
process instead (it imports ``preload`` once, so a new worker starts in milliseconds).

Workers open no database connection and return compact results (bytes, short lists):
unpickling happens in the executor's own thread, never on the loop. Everything that
may block (spawning a process, writing to the executor's wake-up pipe, shutdown) runs
in a thread.

A worker that dies (killed, out of memory) breaks a ``ProcessPoolExecutor`` for good;
:meth:`WorkerPool.run` then replaces the executor and raises :class:`WorkerLost` for
the calls that were in flight, so their callers can retry their unit of work.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import select
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("app.workers")

T = TypeVar("T")
_SHUTDOWN_WAIT_S = 5.0


class WorkerLost(RuntimeError):
    """A worker process died while this call was queued or running (retry the work)."""


def _pid() -> int:
    return os.getpid()


def _exit_with(owner: int) -> None:
    """Exit this worker as soon as the process that owns the pool is gone.

    A worker's parent is the forkserver, not the app, and every worker holds both ends
    of the pool's queues, so a worker whose app was killed (SIGKILL, out of memory)
    would otherwise wait on its queue for ever, and keep the forkserver alive with it.
    """
    try:
        watched = os.pidfd_open(owner)
    except (OSError, AttributeError):  # the owner is gone already, or no pidfd here
        if not _alive(owner):
            os._exit(1)
        return

    def watch() -> None:
        select.select([watched], [], [])  # readable when the owner exits
        os._exit(1)

    threading.Thread(target=watch, name="pulse-owner-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _init_worker(nice: int, owner: int = 0) -> None:
    if owner:
        _exit_with(owner)
    # Well below the app process (nice 10: about a tenth of its CPU share when both
    # want a core): a request's work, and the loop that feeds the workers, go first;
    # the bulk work takes what is left.
    if nice:
        os.nice(nice)


class WorkerPool:
    """``workers`` processes doing CPU work for the app; start with :meth:`start`."""

    def __init__(
        self,
        workers: int,
        *,
        preload: Sequence[str] = (),
        nice: int = 10,
        call_timeout_s: float | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = workers
        self._preload = list(preload)
        self._nice = nice
        self._call_timeout_s = call_timeout_s
        self._executor: ProcessPoolExecutor | None = None
        self._generation = 0
        self._lock = threading.Lock()
        self._closed = False

    # --- life cycle ----------------------------------------------------------------
    def _create(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        if self._preload:
            context.set_forkserver_preload(self._preload)
        executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(self._nice, os.getpid()),
        )
        # Start every worker now (here, in a thread), not lazily inside a later submit.
        warm = [executor.submit(_pid) for _ in range(self.workers * 2)]
        for future in warm:
            future.result(timeout=60)
        return executor

    async def start(self) -> None:
        """Start the worker processes (in a thread: spawning blocks)."""
        if self._executor is None:
            self._executor = await asyncio.to_thread(self._create)
            log.info("workers.started", workers=self.workers)

    async def close(self) -> None:
        """Stop the workers: queued calls are cancelled, running ones get a few seconds."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(_stop, executor)
            log.info("workers.stopped")

    def pids(self) -> list[int]:
        """The worker processes' ids (tests, metrics)."""
        executor = self._executor
        # No public accessor; the mapping is read-only here.
        processes = getattr(executor, "_processes", None) or {}
        return sorted(processes)

    # --- work ----------------------------------------------------------------------
    def _submit(self, generation: int, fn: Callable[..., T], args: tuple[Any, ...]) -> Any:
        with self._lock:
            if self._closed:
                raise WorkerLost("the worker pool is shut down")
            if self._executor is None:
                self._executor = self._create()
            return self._executor.submit(fn, *args), self._generation

    def _replace(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation or self._closed:
                return  # someone replaced it already
            broken, self._executor = self._executor, None
            self._generation += 1
            if broken is not None:
                _stop(broken)
            self._executor = self._create()
        log.warning("workers.replaced", generation=self._generation)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker process. ``fn`` and its arguments must pickle.

        Cancelling the caller cancels the call if it has not started; a started call
        runs to its end (callers keep calls short: a chunk of a file, not the file).
        A call still running after ``call_timeout_s`` is taken for a hung worker: the
        workers are replaced (the other calls in flight fail with :class:`WorkerLost`
        too) and the call raises :class:`WorkerLost`.
        """
        generation = self._generation
        try:
            future, generation = await asyncio.to_thread(self._submit, generation, fn, args)
            async with asyncio.timeout(self._call_timeout_s):
                return await asyncio.wrap_future(future)
        except BrokenProcessPool as exc:
            await asyncio.to_thread(self._replace, generation)
            raise WorkerLost(f"a worker process died: {exc}") from None
        except TimeoutError:
            log.warning("workers.call_timeout", timeout_s=self._call_timeout_s)
            await asyncio.to_thread(self._replace, generation)
            raise WorkerLost(
                f"a worker call ran for more than {self._call_timeout_s:g} s;"
                " the worker processes were replaced"
            ) from None


# How a unit of CPU work runs: ``WorkerPool.run`` (imports), or inline (small loads,
# scripts, tests without a pool).
RunInWorker = Callable[..., Awaitable[Any]]


async def run_inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _stop(executor: ProcessPoolExecutor) -> None:
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(_SHUTDOWN_WAIT_S)
        if process.is_alive():
            process.terminate()
            process.join(_SHUTDOWN_WAIT_S)
