"""Running a program in two gloo ranks with torchrun, as the DDP tests do."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def torchrun_two_ranks(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=2 <args>`` with the tests folder importable
    (ahead of any PYTHONPATH already set), one thread per rank and no progress bars; fails
    the test, with the end of stderr, unless it exits with 0."""
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*torchrun, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done
