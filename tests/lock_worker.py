"""Run under torchrun while another process holds <out>'s training lock: every rank asks for
the group's lock and writes what it got to <out>/rank<R>.txt ("held" or the refusal)."""

import sys
from pathlib import Path

import torch.distributed as dist
from accelerate import Accelerator

from mixphm.training.external import group_training_lock


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    try:
        with group_training_lock(out, accelerator):
            outcome = "held"
    except RuntimeError as refusal:
        outcome = str(refusal)
    (out / f"rank{accelerator.process_index}.txt").write_text(outcome)
    # exiting with the gloo group alive can abort a rank ("terminate called without an
    # active exception"), which fails the run although every rank did its work
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
