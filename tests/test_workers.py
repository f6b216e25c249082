import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import worker_tasks

from mixphm.experiments.workers import map_in_workers

COMMAND = Path(worker_tasks.__file__)


def test_every_item_is_done_once():
    results = map_in_workers(worker_tasks.square, range(7), 2, worker_tasks.no_setup)
    assert sorted(results) == [n * n for n in range(7)]


@pytest.mark.parametrize(
    ("task", "setup", "error", "message"),
    [
        (worker_tasks.fail, worker_tasks.no_setup, ValueError, r"task \d failed"),
        (worker_tasks.square, worker_tasks.failing_setup, FileNotFoundError, "data is missing"),
    ],
)
def test_a_failure_in_a_worker_is_raised_in_the_caller(task, setup, error, message):
    with pytest.raises(error, match=message):
        list(map_in_workers(task, range(3), 2, setup))


def test_a_worker_that_dies_ends_the_map_with_an_error(tmp_path):
    held = tmp_path / "task.pid"
    results = map_in_workers(worker_tasks.answer_or_hold, [1, str(held)], 2, worker_tasks.no_setup)
    # one answer first: Python 3.11's executor can miss the death of a worker started after
    # it began waiting for its first answer (it notices at the next answer)
    assert next(results) == 1
    deadline = time.monotonic() + 60
    while not held.exists():
        assert time.monotonic() < deadline, "the second task did not start"
        time.sleep(0.05)
    os.kill(int(held.read_text()), signal.SIGKILL)  # as the out-of-memory killer does
    with pytest.raises(RuntimeError, match="a worker process died"):
        next(results)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda process: os.killpg(process.pid, signal.SIGINT), id="ctrl-c"),
        pytest.param(lambda process: process.send_signal(signal.SIGTERM), id="sigterm"),
    ],
)
def test_an_interrupted_command_stops_its_workers_at_once(tmp_path, stop):
    process = subprocess.Popen(
        [sys.executable, str(COMMAND), str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 2:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.1)
    workers = [int(path.read_text()) for path in tmp_path.glob("*.pid")]
    stop(process)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert err == (
        "mixphm train: interrupted; finished runs are kept, and the same command resumes an "
        "unfinished run from its last finished epoch\n"
    )
    assert len(list(tmp_path.glob("*.pid"))) == 2  # no task started after the interruption
    assert not any(alive(pid) for pid in workers)
