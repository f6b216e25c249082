"""Run under torchrun: train a tiny backbone with AdaMix (routed experts, no dropout) through
the recipe under DDP; each rank writes its final trainable weights to <out>/rank<R>.pt."""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from tiny_models import tiny_candidates, tiny_split, tiny_vlm

from mixphm.training.objectives import CandidateScoring
from mixphm.training.recipe import RunSpec, train, trainable_state

DATA = (tiny_split(32, seed=0), tiny_split(16, seed=1), tiny_split(16, seed=2))


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    torch.manual_seed(1000 + rank)  # the recipe must not depend on each process's RNG
    captured = {}

    def build():
        captured["model"] = tiny_vlm()
        return captured["model"]

    spec = RunSpec("adamix", 32, 13, "tiny", max_epochs=2)
    train(
        spec, build, DATA, CandidateScoring(tiny_candidates()), out / f"run-rank{rank}", accelerator
    )
    torch.save(trainable_state(captured["model"]), out / f"rank{rank}.pt")
    dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(Path(sys.argv[1]))
