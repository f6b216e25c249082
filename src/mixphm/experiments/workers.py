"""Worker processes that stop when their command is stopped, and say so when they die.

Ctrl-C reaches every process of the terminal's process group. If each worker took it as a
KeyboardInterrupt, it would report its run as failed and start the next one, and the
command would end only when the runs in flight had (hours, for a paper-v1 run at k = 1000),
in a traceback. So workers ignore SIGINT, and when the parent is interrupted (Ctrl-C, or
SIGTERM, which the CLI turns into the same) it terminates them at once. A run then loses
at most the epochs since its last checkpoint, written atomically after every dev evaluation
(every epoch under the quick-v1 recipe, every 10 under paper-v1) and after the first epoch
that ends five minutes or more after the last one.
A worker that dies (the kernel's out-of-memory killer) ends the command with an error.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from tqdm import tqdm

Item = TypeVar("Item")
Result = TypeVar("Result")

_setup_error: Exception | None = None


def _start_worker(initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
    global _setup_error
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers
    # tqdm's default lock is a named semaphore, which a terminated worker cannot release
    # (the parent then warns of leaked semaphores); a worker's bars need only a thread lock
    tqdm.set_lock(threading.RLock())
    try:
        initializer(*initargs)
    except Exception as error:  # raised by the worker's first task, as the task's own would be
        _setup_error = error


def _call(function: Callable[[Item], Result], item: Item) -> Result:
    if _setup_error is not None:
        raise _setup_error
    return function(item)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now, their tasks in flight with them (Python 3.14 has
    ``ProcessPoolExecutor.terminate_workers``; before it, the pool's process table)."""
    for process in list(pool._processes.values()):
        process.terminate()


def map_in_workers(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...] = (),
) -> Iterator[Result]:
    """``function(item)`` for every item in ``workers`` spawned processes, each set up once
    by ``initializer(*initargs)``; results come as they finish. An exception in a worker
    (its setup's included) is raised here, a worker's death as a RuntimeError; an
    interruption of the caller, or closing the iterator early, terminates the workers.
    ``function`` and ``initializer`` must be picklable (module-level functions)."""
    context = multiprocessing.get_context("spawn")  # no fork after torch started threads
    pool = ProcessPoolExecutor(workers, context, _start_worker, (initializer, initargs))
    try:
        futures = [pool.submit(_call, function, item) for item in items]
        for future in as_completed(futures):
            yield future.result()
    except BrokenProcessPool:
        raise RuntimeError(
            "a worker process died (killed from outside, or out of memory); finished runs "
            "are kept, and the same command resumes the others"
        ) from None
    except BaseException:
        _terminate(pool)
        raise
    finally:
        pool.shutdown(cancel_futures=True)
