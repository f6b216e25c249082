"""Tasks for worker processes (spawned workers import them from here), and a command whose
runs take long: ``python worker_tasks.py DIR`` is ``mixphm train``'s command handling around
four tasks in two workers; each task writes its worker's pid to ``DIR/task<i>.pid``, then
waits."""

import os
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mixphm import cli
from mixphm.experiments.cores import CoreShare
from mixphm.experiments.workers import map_in_workers

_share: CoreShare | None = None


def square(number: int) -> int:
    return number * number


def fail(number: int) -> int:
    raise ValueError(f"task {number} failed")


def no_setup() -> None:
    pass


def failing_setup() -> None:
    raise FileNotFoundError("the worker's data is missing")


def hold(path: str) -> None:
    for _ in tqdm(range(1), disable=True):  # as a training run does (tqdm makes its lock)
        Path(path + ".tmp").write_text(str(os.getpid()))
        os.replace(path + ".tmp", path)
        time.sleep(300)


def answer_or_hold(item: int | str) -> int | None:
    """A number comes straight back; a path is held (``hold``)."""
    if isinstance(item, int):
        return item
    hold(item)
    return None


def take_share(share: CoreShare) -> None:
    global _share
    _share = share
    share.apply()


def threads_at_the_end(run: str) -> int:
    """The run "quick" finishes at once; any other waits for the others to finish, then
    takes its share again. Either returns its intra-op threads at its end."""
    assert _share is not None
    if run == "quick":
        _share.finished_one()
        return torch.get_num_threads()
    deadline = time.monotonic() + 60
    while _share.unfinished.value > 1:
        assert time.monotonic() < deadline, "the other run's end never reached this worker"
        time.sleep(0.01)
    _share.apply()
    return torch.get_num_threads()


def held_runs(args, command) -> None:
    tasks = [f"{sys.argv[1]}/task{i}.pid" for i in range(4)]
    for _ in map_in_workers(hold, tasks, 2, no_setup):
        pass


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    cli.run = held_runs
    sys.exit(cli.main(["train", "--method", "mixphm", "--k", "16"]))
