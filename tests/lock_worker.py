"""Run under torchrun while another process holds <out>'s training lock: every rank starts
the production grid and writes to <out>/rank<R>.json the refusal it got and whether its
process group was still alive afterwards."""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from mixphm.backbones.generation import Decoding
from mixphm.experiments.external import ExternalData, run_external_grid
from mixphm.training.recipe import RunSpec


def main(out: Path) -> None:
    # never read: the refusal comes before the grid loads its data
    data = ExternalData("vqa-v2", (out / "train.json",), (out / "test.json",))
    spec = RunSpec("mixphm", k=4, seed=13, backbone="vlt5")
    try:
        run_external_grid([spec], data, None, "t5-base", Decoding(), out)
        outcome = "held"
    except RuntimeError as refusal:
        outcome = str(refusal)
    record = {"outcome": outcome, "group_alive": dist.is_initialized()}
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
