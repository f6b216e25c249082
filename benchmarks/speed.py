"""Speed and memory of MixPHM against its baselines, measured side by side in one process.

    python benchmarks/speed.py --output benchmarks/results/cpu.json            # VL-T5 sized
    python benchmarks/speed.py --backbone offline --output benchmarks/results/cpu-offline.json
    python benchmarks/speed.py --compile --output benchmarks/results/cpu-compiled.json
    python benchmarks/speed.py --cuda-graphs --dtype bfloat16 --output h200-graphs.json  # GPU

``--compile`` compiles every model's forward (``mixphm.compile_forward``: MixPHM's routing
hook stays outside the graph, so forward and backward are one graph each) and the PHM
layer micro-benchmark's functions; ``--cuda-graphs`` does the same with torch.compile's
"reduce-overhead" mode, which replays each graph as a captured CUDA graph (on the CPU it
is plain compilation).

The VL-T5-sized backbone is T5-base with random weights (timing does not need trained ones):
20 text tokens and 36 visual tokens enter the encoder as embeddings, batch 16, 8 answer
tokens. The variants compared by a ratio are timed interleaved, one call of each per round
(A, B, C, A, B, C, ...), ``--reps`` rounds after ``--warmup`` calls each: a ratio is the
median over rounds of that round's ratio, reported with its range over the rounds
(``ratio_spread``), and every time is the median over rounds.

Memory: on CUDA the peak allocated memory of a training step; on the CPU, where PyTorch keeps
no peak counter, the bytes a training step must hold: weights, gradients, optimizer state and
the activations saved for the backward pass (counted with saved-tensor hooks).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers as tf
from torch import Tensor, nn

from mixphm import MixPHMConfig, add_mixphm, compile_forward, deploy
from mixphm.optim import ExpertAdamW, adamw, routed_parameters
from mixphm.phm import PHMProjection, PHMRule


@dataclass
class Workload:
    build: Callable[[], nn.Module]
    inputs: dict[str, Tensor]
    loss: Callable[[nn.Module, dict[str, Tensor]], Tensor]


def t5_workload(device: torch.device, dtype: torch.dtype, tiny: bool = False) -> Workload:
    """T5-base shapes (or a 2-layer d = 48 model for smoke tests), 56 input embeddings."""
    width, layers, vocab = (48, 2, 512) if tiny else (768, 12, 32128)
    config = tf.T5Config(
        d_model=width,
        d_ff=4 * width,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=12,
        d_kv=width // 12,
        vocab_size=vocab,
        decoder_start_token_id=0,
        dropout_rate=0.0,
    )
    g = torch.Generator().manual_seed(0)
    inputs = {
        "inputs_embeds": torch.randn(16, 56, width, generator=g).to(device, dtype),
        "labels": torch.randint(3, vocab, (16, 8), generator=g).to(device),
    }

    def build() -> nn.Module:
        torch.manual_seed(0)
        return tf.T5ForConditionalGeneration(config).to(device, dtype)

    return Workload(build, inputs, lambda model, batch: model(**batch).loss)


def offline_workload(device: torch.device, dtype: torch.dtype) -> Workload:
    from mixphm.pretraining.recipe import pretrained_backbone

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (16, 14), generator=g)
    ids[:, 0], ids[:, -2], ids[:, -1] = 101, 103, 102
    inputs = {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "visual": torch.randn(16, 16, 1280, generator=g).to(device, dtype),
        "answer_ids": torch.randint(1000, 2000, (13, 3), generator=g).to(device),
        "answer_mask": torch.ones(13, 3, dtype=torch.long).to(device),
    }

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(
            model(**batch).float(), torch.zeros(16, dtype=torch.long, device=device)
        )

    return Workload(lambda: pretrained_backbone().to(device, dtype), inputs, loss)


def with_method(workload: Workload, method: str) -> nn.Module:
    model = workload.build()
    if method in ("mixphm", "pfeiffer"):
        # the Pfeiffer adapter gets MixPHM's bottleneck, so the two do the same work
        reduction = MixPHMConfig().reduction_factor
        config = MixPHMConfig.preset(method, dropout=0.0, reduction_factor=reduction)
        return add_mixphm(model, config)
    if method == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        model.requires_grad_(False)
        targets = ["q", "v"] if isinstance(model, tf.T5PreTrainedModel) else ["query", "value"]
        return inject_adapter_in_model(
            LoraConfig(r=8, lora_alpha=16, target_modules=targets), model
        )
    if method == "full":
        return model.requires_grad_(True)
    return model.requires_grad_(False)  # "floor" and "base"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


Steps = dict[str, Callable[[], Any]]
Rounds = dict[str, list[float]]
"""Per variant, its milliseconds in each round."""


def interleaved_ms(steps: Steps, device: torch.device, warmup: int, rounds: int) -> Rounds:
    """Time the variants in turn, A, B, C, A, B, C, ..., one call each per round after
    ``warmup`` calls each, so a drift in the machine's speed reaches every variant alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: Rounds = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def round_ratios(times: Rounds, numerator: str, denominator: str) -> list[float]:
    """``numerator`` / ``denominator`` within each round."""
    return [a / b for a, b in zip(times[numerator], times[denominator], strict=True)]


def train_step(workload: Workload, model: nn.Module, floor: bool) -> tuple[Callable[[], None], Any]:
    """One forward + backward (+ the recipe's AdamW step when anything trains). The floor
    makes the inputs require grad instead, so backward runs through the frozen model only."""
    trains = any(p.requires_grad for p in model.parameters())
    optimizer = adamw(model, lr=1e-4, weight_decay=0.0) if trains else None
    batch = dict(workload.inputs)
    if floor:
        key = "inputs_embeds" if "inputs_embeds" in batch else "visual"
        batch[key] = batch[key].clone().requires_grad_(True)
    model.train()

    def step() -> None:
        workload.loss(model, batch).backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step, optimizer


def training_bytes(workload: Workload, model: nn.Module, device: torch.device) -> int:
    step, optimizer = train_step(workload, model, floor=False)
    step()  # optimizer state exists after the first step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        return int(torch.cuda.max_memory_allocated())
    saved = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = workload.loss(model, workload.inputs)
    loss.backward()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = 0
    if optimizer is not None:
        state = sum(
            v.numel() * v.element_size()
            for s in optimizer.state.values()
            for v in s.values()
            if isinstance(v, Tensor)
        )
    return weights + grads + state + saved


def naive_phm_forward(x: Tensor, rule: Tensor, left: Tensor, right: Tensor, bias: Tensor) -> Tensor:
    """The reference code's way: rebuild W = Σ kron(S_i, T_i U_i) on every call."""
    weight = sum(torch.kron(rule[i], left[i] @ right[i]) for i in range(rule.shape[0]))
    return x @ weight + bias


def phm_layer(
    device: torch.device,
    dtype: torch.dtype,
    warmup: int,
    rounds: int,
    compiled: Callable[[Callable[..., Tensor]], Callable[..., Tensor]] = lambda fn: fn,
) -> Rounds:
    """768 → 64, n = 4, rank 8, 16 × 56 tokens: forward + backward, and cached inference.
    Also a dense layer of the same shape whose weight is a parameter: the floor of any
    implementation that multiplies by the full weight. Every forward goes through
    ``compiled`` (identity: eager)."""
    torch.manual_seed(0)
    rule = PHMRule(4).to(device, dtype)
    projection = PHMProjection(768, 64, 1, 4, 8, rule).to(device, dtype)
    x = torch.randn(16 * 56, 768, device=device, dtype=dtype)
    left, right, bias = projection.left[0], projection.right[0], projection.bias[0]

    ours_forward = compiled(lambda: F.linear(x, *projection.expert(0)).sum())
    naive_forward = compiled(lambda: naive_phm_forward(x, rule.S, left, right, bias).sum())
    dense_weight = nn.Parameter(torch.randn(64, 768, device=device, dtype=dtype) / 768**0.5)
    dense_bias = nn.Parameter(torch.zeros(64, device=device, dtype=dtype))
    dense_forward = compiled(lambda: F.linear(x, dense_weight, dense_bias).sum())
    with torch.no_grad():
        cached_weight, cached_bias = projection.merged("factors")
    cached_forward = compiled(lambda: F.linear(x, cached_weight, cached_bias))

    def ours_train() -> None:
        ours_forward().backward()

    def naive_train() -> None:
        naive_forward().backward()

    def dense_train() -> None:
        dense_forward().backward()

    def ours_infer() -> None:
        with torch.no_grad():
            cached_forward()

    def naive_infer() -> None:
        with torch.no_grad():
            naive_forward()

    naive = naive_phm_forward(x, rule.S, left, right, bias).float()
    ours = F.linear(x, *projection.expert(0)).float()
    # rounding grows with the dtype's epsilon; a wrong weight layout is off by O(scale)
    tolerance = 16 * torch.finfo(dtype).eps * naive.abs().max()
    assert (ours - naive).abs().max() <= tolerance, "the two PHM implementations disagree"
    steps = {
        "phm_train_ours": ours_train,
        "phm_train_naive": naive_train,
        "phm_train_dense": dense_train,
        "phm_infer_ours": ours_infer,
        "phm_infer_naive": naive_infer,
    }
    return interleaved_ms(steps, device, warmup, rounds)


def optimizer_step(workload: Workload, device: torch.device, warmup: int, rounds: int) -> Rounds:
    """The optimizer step alone on MixPHM's trainable tensors, gradients given: ExpertAdamW
    (one routed expert per projection, as in training) against torch's fused AdamW, which
    updates every expert and so is the floor of any per-expert scheme."""
    model = with_method(workload, "mixphm")
    params = [p for p in model.parameters() if p.requires_grad]
    experts = routed_parameters(model)
    projections = list(dict.fromkeys(experts.values()))
    for param in params:
        param.grad = torch.randn_like(param)
    ours = ExpertAdamW(params, experts, lr=1e-4, weight_decay=0.0)
    fused = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=True)

    def expert_step() -> None:
        for projection in projections:
            projection.routed[0] = True
        ours.step()

    steps = {"optim_expert_adamw": expert_step, "optim_fused_adamw": fused.step}
    return interleaved_ms(steps, device, warmup, rounds)


RATIOS = {
    "train_mixphm_over_lora": ("train_mixphm", "train_lora"),
    "train_mixphm_over_full": ("train_mixphm", "train_full"),
    "train_mixphm_over_pfeiffer": ("train_mixphm", "train_pfeiffer"),
    "train_mixphm_over_floor": ("train_mixphm", "train_floor"),
    "infer_merged_over_adapter": ("infer_mixphm", "infer_pfeiffer"),
    "infer_deployed_over_adapter": ("infer_mixphm_deployed", "infer_pfeiffer"),
    "infer_merged_over_base": ("infer_mixphm", "infer_base"),
    "infer_deployed_over_base": ("infer_mixphm_deployed", "infer_base"),
    "phm_layer_speedup_over_naive": ("phm_train_naive", "phm_train_ours"),
    "phm_layer_over_dense": ("phm_train_ours", "phm_train_dense"),
    "phm_layer_naive_over_dense": ("phm_train_naive", "phm_train_dense"),
    "phm_layer_inference_speedup_over_naive": ("phm_infer_naive", "phm_infer_ours"),
    "optim_expert_over_fused_adamw": ("optim_expert_adamw", "optim_fused_adamw"),
}
"""Each reported ratio: (numerator, denominator), two variants timed in the same rounds.
``infer_mixphm`` is the default eval path (the merge built inside every forward);
``infer_mixphm_deployed`` the one after ``mixphm.deploy`` (merged once, then fixed)."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", choices=["vlt5", "offline", "tiny"], default="vlt5")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--reps", type=int, default=5, help="rounds of interleaved calls (one per variant)"
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--compile", action="store_true", help="torch.compile every forward before timing it"
    )
    modes.add_argument(
        "--cuda-graphs",
        action="store_true",
        help='torch.compile with mode="reduce-overhead": CUDA graphs on a GPU',
    )
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.backbone == "offline":
        workload = offline_workload(device, dtype)
    else:
        workload = t5_workload(device, dtype, tiny=args.backbone == "tiny")

    options: dict[str, Any] | None = None
    if args.compile or args.cuda_graphs:
        options = {"mode": "reduce-overhead"} if args.cuda_graphs else {}

    def prepared(method: str) -> nn.Module:
        model = with_method(workload, method)
        return model if options is None else compile_forward(model, **options)

    def compiled(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        return fn if options is None else torch.compile(fn, **options)

    def train_steps() -> Steps:
        steps = {}
        for method in ("mixphm", "lora", "pfeiffer", "full", "floor"):
            steps[f"train_{method}"], _ = train_step(
                workload, prepared(method), floor=method == "floor"
            )
        return steps

    def infer_steps() -> Steps:
        models = {
            "infer_mixphm": prepared("mixphm").eval(),
            "infer_mixphm_deployed": deploy(prepared("mixphm")),
            "infer_pfeiffer": prepared("pfeiffer").eval(),
            "infer_base": prepared("base").eval(),
        }

        def forward(model: nn.Module) -> Callable[[], None]:
            def step() -> None:
                with torch.no_grad():
                    workload.loss(model, workload.inputs)

            return step

        return {name: forward(model) for name, model in models.items()}

    rounds: Rounds = {}
    for name, group in (("training steps", train_steps), ("inference", infer_steps)):
        rounds |= interleaved_ms(group(), device, args.warmup, args.reps)
        print(f"{name}: done", file=sys.stderr)
    rounds |= phm_layer(device, dtype, args.warmup, max(args.reps, 200), compiled)
    rounds |= optimizer_step(workload, device, args.warmup, max(args.reps, 20))
    memory = {
        f"peak_bytes_{m}": training_bytes(workload, with_method(workload, m), device)
        for m in ("mixphm", "full")
    }
    per_round = {name: round_ratios(rounds, *pair) for name, pair in RATIOS.items()}
    ratios = {name: statistics.median(values) for name, values in per_round.items()}
    ratios["peak_memory_mixphm_over_full"] = memory["peak_bytes_mixphm"] / memory["peak_bytes_full"]
    spread = {name: [min(values), max(values)] for name, values in per_round.items()}
    timings = {f"{name}_ms": statistics.median(values) for name, values in rounds.items()}
    report = {
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        },
        "backbone": args.backbone,
        "dtype": args.dtype,
        "compiled": options is not None,
        "cuda_graphs": args.cuda_graphs,
        "ratios": ratios,
        "ratio_spread": spread,
        "timings_ms": timings,
        "memory_bytes": memory,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    return report


if __name__ == "__main__":
    main()
