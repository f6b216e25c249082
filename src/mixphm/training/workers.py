"""Worker processes that stop when their command is stopped.

Ctrl-C reaches every process of the terminal's process group. If each worker took it as a
KeyboardInterrupt, the pool would report the run in flight as failed and hand the worker the
next one, and the command would only end once the runs in flight had finished (a k = 1000
run trains for 25 minutes), ending in a traceback. So workers ignore SIGINT, and when the
parent is interrupted (Ctrl-C, or SIGTERM, which the CLI turns into the same) it terminates
them at once. A run then loses at most its epoch in progress: its checkpoint is written
atomically after every epoch.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_setup_error: Exception | None = None


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _start_worker(initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
    global _setup_error
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers
    # terminated by the parent: exit through Python, so multiprocessing's exit handlers
    # release what the worker holds (a killed one leaves the parent to warn of leaks)
    signal.signal(signal.SIGTERM, _exit)
    try:
        initializer(*initargs)
    except Exception as error:  # a raising initializer would make the pool respawn forever
        _setup_error = error


def _call(function: Callable[[Item], Result], item: Item) -> Result:
    if _setup_error is not None:
        raise _setup_error
    return function(item)


def map_in_workers(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...] = (),
) -> Iterator[Result]:
    """``function(item)`` for every item in ``workers`` spawned processes, each set up once
    by ``initializer(*initargs)``; results come as they finish. An exception in a worker
    (its setup's included) is raised here; an interruption of the caller, or closing the
    iterator early, terminates the workers. ``function`` and ``initializer`` must be
    importable module-level functions."""
    context = multiprocessing.get_context("spawn")  # no fork after torch started threads
    with context.Pool(workers, _start_worker, (initializer, initargs)) as pool:
        yield from pool.imap_unordered(partial(_call, function), items)
