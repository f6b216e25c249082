"""Run under torchrun: train a tiny backbone with AdaMix (routed experts, no dropout) through
the recipe under DDP on <k> training questions; each rank writes its final trainable
weights to <out>/rank<R>.pt.

    torchrun --nproc_per_node=2 ddp_training_worker.py <out> <k>
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from tiny_models import tiny_candidates, tiny_split, tiny_vlm

from mixphm.training.objectives import CandidateScoring
from mixphm.training.recipe import RunSpec, train, trainable_state


def worker_data(k: int):
    return tiny_split(k, seed=0), tiny_split(16, seed=1), tiny_split(16, seed=2)


def main(out: Path, k: int) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    torch.manual_seed(1000 + rank)  # the recipe must not depend on each process's RNG
    captured = {}

    def build():
        captured["model"] = tiny_vlm()
        return captured["model"]

    spec = RunSpec("adamix", k, 13, "tiny", max_epochs=2)
    data = worker_data(k)
    train(
        spec, build, data, CandidateScoring(tiny_candidates()), out / f"run-rank{rank}", accelerator
    )
    torch.save(trainable_state(captured["model"]), out / f"rank{rank}.pt")
    dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(Path(sys.argv[1]), int(sys.argv[2]))
