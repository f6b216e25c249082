"""How the worker processes of a grid share the machine's cores.

Each worker trains with an even share of the cores. When fewer runs are left unfinished
than there are workers (the end of a grid, where one long run often trains for hours after
its partner stopped early), the runs still training take the idle workers' share, at their
next epoch rather than only when the next grid starts.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized

import torch


def threads_per_worker(cores: int, processes: int) -> int:
    """The intra-op threads of each of ``processes`` workers sharing ``cores``: a lone run
    (one left in its cell) gets every core instead of its share of a pool it does not need."""
    return max(1, cores // processes)


@dataclass(frozen=True)
class CoreShare:
    """``cores`` shared by ``workers`` processes; ``unfinished`` counts the runs not yet
    finished, in memory shared by the processes (passed to them when they start)."""

    cores: int
    workers: int
    unfinished: Synchronized[int]

    @classmethod
    def create(cls, cores: int, workers: int, runs: int) -> CoreShare:
        """The share for ``runs`` runs in ``workers`` processes spawned (``spawn``) later."""
        return cls(cores, workers, multiprocessing.get_context("spawn").Value("i", runs))

    def threads(self) -> int:
        """A worker's intra-op threads now."""
        return threads_per_worker(self.cores, min(self.workers, max(1, self.unfinished.value)))

    def apply(self) -> None:
        """Set the calling process's intra-op threads to its share now (call it from the
        thread that trains: OpenMP keeps the setting per thread)."""
        torch.set_num_threads(self.threads())

    def finished_one(self) -> None:
        """Record that a run finished (or failed), freeing its share for the others."""
        with self.unfinished.get_lock():
            self.unfinished.value -= 1
