"""Run under torchrun: each rank trains a tiny adapted T5 under DDP and records its routing.

Every rank seeds its global RNG differently and sees different labels on purpose: the
ranks end equal only if routing ignores the global RNG and DDP averages the gradients.
Writes ``<out>/rank<R>.pt`` with the expert choices per step and the initial and final
adapter states.
"""

import os
import sys

import torch
import torch.distributed as dist
from tiny_models import t5

from mixphm import MixPHMConfig, add_mixphm, mixphm_adapters

STEPS = 6


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(1234)  # identical base and adapter initialisation
    built = t5()
    model = add_mixphm(built.model, MixPHMConfig(reduction_factor=4, phm_dim=2, routing_seed=42))
    initial = {
        p: {k: v.clone() for k, v in a.state_dict().items()} for p, a in mixphm_adapters(model)
    }
    torch.manual_seed(1000 + rank)  # different global RNG per rank
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    batch = {**built.batch, "labels": built.batch["labels"] + rank}
    choices = []
    ddp.train()
    for _ in range(STEPS):
        loss = ddp(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        choices.append(model.mixphm_router.choices.clone())
    state = {p: a.state_dict() for p, a in mixphm_adapters(model)}
    saved = {"choices": torch.stack(choices), "state": state, "initial": initial}
    torch.save(saved, f"{out_dir}/rank{rank}.pt")
    # DDP's reducer must not hold the last reference to the process group: freed from the
    # reducer, gloo's destructor keeps the GIL while it joins worker threads that may need
    # it (pytorch/pytorch#56297), and the rank hangs at exit now and then.
    del ddp
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1])
