"""The training loop: one method, one k, one seed, under one named recipe
(``mixphm.training.recipes``), on any backbone an ``Objective`` drives (the offline default
scores candidate answers; VL-T5 and Hugging Face VLMs generate them).

An explicit loop (accelerate for the device, mixed precision and DDP): AdamW (per-expert
state for routed experts, ``mixphm.optim``), linear warm-up then decay, gradient clipping,
the objective's soft-score-weighted answer loss plus the redundancy regularizer when the
method has it, dev evaluations at the recipe's interval with its selection and early
stopping rules, and both the best-dev and the last weights evaluated on the test split.

Interrupted runs resume from ``<run_dir>/checkpoint.pt`` (written atomically after every
dev evaluation) and end exactly as an uninterrupted run: the data order of epoch e depends
only on (seed, e), and the RNG, optimizer, schedule and routing states are restored.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from mixphm.evaluation import Scored, score, summarize
from mixphm.inject import adapter_router, mixphm_adapters, parameter_counts
from mixphm.optim import adamw
from mixphm.regularization import RedundancyConfig, RedundancyRegularizer
from mixphm.schedule import linear_warmup_decay
from mixphm.training import checkpoint
from mixphm.training.methods import apply_method, method_settings, regularizer_config
from mixphm.training.objectives import Objective, Split
from mixphm.training.recipes import DEFAULT_RECIPE, LEGACY_RECIPE, Recipe, get_recipe

CHECKPOINT_FILE = "checkpoint.pt"
"""An unfinished run's state, written after every dev evaluation (what a resume reads)."""
BEST_FILE = "best.safetensors"
"""The best-dev trainable weights of a finished run (what ``mixphm predict`` loads)."""
PREDICTIONS_FILE = "test_predictions.json"
"""A finished run's test answers, question id → answer (what ``mixphm breakdown`` reads)."""
HISTORY_FILE = "history.json"
"""A finished run's dev curve and per-epoch training loss (what ``mixphm curves`` reads)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class RunSpec:
    method: str
    k: int
    seed: int
    backbone: str = "pretrained"
    max_epochs: int | None = None
    """Overrides the recipe's epoch cap (tests and quick runs)."""
    mixed_precision: str = "no"
    """accelerate's mixed precision: "no", "bf16" or "fp16"."""
    adapter_options: tuple[tuple[str, Any], ...] = ()
    """MixPHMConfig fields overriding the method's preset (ablations), as (name, value)."""
    recipe: str = DEFAULT_RECIPE
    """The name of the training recipe (``mixphm.training.recipes``)."""
    dataset: str = "easy-vqa"
    """Chooses the recipe's patience (OK-VQA and GQA have their own)."""
    lr: float | None = None
    """A learning rate overriding the method's own (``configs/methods.toml``); one equal to
    the method's is kept as None, so that such a run is the method's own run."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", lr_override(self.method, self.lr))

    @property
    def variant(self) -> str:
        return variant_name(self.method, dict(self.adapter_options), self.lr)

    @property
    def learning_rate(self) -> float:
        return method_settings(self.method).lr if self.lr is None else self.lr

    @property
    def training(self) -> Recipe:
        return get_recipe(self.recipe)


def lr_override(method: str, lr: float | None) -> float | None:
    """``lr`` where it differs from ``method``'s own rate, else None."""
    if lr is None or method == "zero-shot" or lr == method_settings(method).lr:
        return None
    return lr


def variant_name(method: str, adapter_options: dict[str, Any], lr: float | None = None) -> str:
    """The method with its adapter options and any overriding learning rate, e.g.
    ``mixphm+dropout=0.0+num_experts=1`` or ``mixphm+lr=0.0015``: the name of a run's folder
    and of its row in tables, so an ablation or another rate never shares either with the
    method's own runs."""
    options = (
        f"+{name}={value if isinstance(value, str) else json.dumps(value)}"
        for name, value in sorted(adapter_options.items())
    )
    rate = "" if lr is None else f"+lr={lr:g}"
    return method + "".join(options) + rate


def record_variant(result: dict[str, Any]) -> str:
    """The variant of a finished run's record (its result.json; older ones lack options and
    the learning rate, which was the method's own)."""
    lr = lr_override(result["method"], result.get("lr"))
    return variant_name(result["method"], result.get("adapter_options", {}), lr)


def run_label(result: dict[str, Any]) -> str:
    """``<variant> k=<k> seed=<seed>`` of a finished run's record (its result.json)."""
    return f"{record_variant(result)} k={result['k']} seed={result['seed']}"


@dataclass
class TrainState:
    epoch: int = 0
    best_dev: float = -1.0
    """The dev accuracy of the kept (best) checkpoint."""
    best_epoch: int = -1
    counted_best: float = -1.0
    """The best dev accuracy that reset the patience (improved by more than the recipe's
    delta); with a delta of 0 and ``>`` selection it is ``best_dev``."""
    stale: int = 0
    """Dev evaluations since ``counted_best`` last improved."""
    dev_history: list[float] = field(default_factory=list)
    """Dev accuracy of every evaluation, in order."""
    train_loss: list[float] = field(default_factory=list)
    """Mean training loss of every epoch."""


def update_selection(state: TrainState, dev: float, epoch: int, recipe: Recipe) -> bool:
    """Record one dev evaluation after ``epoch``: whether its weights become the kept
    checkpoint (``>=`` or ``>`` the best, by the recipe), and the patience count (reset
    only by an improvement above the recipe's delta over the best that last reset it)."""
    state.dev_history.append(dev)
    keep = dev >= state.best_dev if recipe.ties_keep_later else dev > state.best_dev
    if keep:
        state.best_dev, state.best_epoch = dev, epoch
    if dev > state.counted_best + recipe.min_delta:
        state.counted_best, state.stale = dev, 0
    else:
        state.stale += 1
    return keep


@dataclass(frozen=True)
class RunResult:
    method: str
    k: int
    seed: int
    backbone: str
    dev_accuracy: float
    test_accuracy: float
    """Test accuracy of the best-dev checkpoint (what tables report)."""
    trainable_parameters: int
    total_parameters: int
    train_seconds: float
    epochs: int
    best_epoch: int
    recipe: str
    last_test_accuracy: float | None
    """Test accuracy of the last checkpoint (None for runs made before it was recorded)."""
    test_questions: int | None
    """Size of the test split scored (None for runs made before it was recorded)."""
    adapter_options: dict[str, Any] = field(default_factory=dict)
    max_epochs: int | None = None
    """The spec's override of the recipe's epoch cap (None: the recipe's cap)."""
    mixed_precision: str = "no"
    dataset: str = "easy-vqa"
    lr: float | None = None
    """The learning rate the run trained with (None: the zero-shot row)."""

    @property
    def variant(self) -> str:
        return variant_name(self.method, self.adapter_options, lr_override(self.method, self.lr))

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RunResult:
        """A ``result.json``'s record; records older than the recipe field were made under
        the legacy recipe and lack the last checkpoint's score, and records older than the
        lr field trained at the method's own rate."""
        legacy: dict[str, Any] = {
            "recipe": LEGACY_RECIPE,
            "last_test_accuracy": None,
            "test_questions": None,
        }
        if record["method"] != "zero-shot":
            legacy["lr"] = method_settings(record["method"]).lr
        return cls(**{**legacy, **record})


def accuracy(objective: Objective, model: Any, split: Split, keep_inputs: bool = False) -> float:
    """Accuracy in percent with the split's metric (``keep_inputs``: see Objective.predict)."""
    return prediction_accuracy(split, objective.predict(model, split, keep_inputs))


def prediction_accuracy(split: Split, predicted: list[str]) -> float:
    """Accuracy in percent of one predicted answer per question of ``split``."""
    report = summarize(
        Scored(score(e, p, split.metric), e.question_type, e.answer_type)
        for e, p in zip(split.examples, predicted, strict=True)
    )
    return report.overall


def run_settings(spec: RunSpec) -> dict[str, Any]:
    """Everything that makes two runs the same run (recorded in checkpoints and results),
    with the learning rate the run trains at."""
    return {
        **asdict(spec),
        "adapter_options": dict(spec.adapter_options),
        "lr": spec.learning_rate if spec.method != "zero-shot" else None,
    }


def check_same_run(spec: RunSpec, recorded: dict[str, Any], source: Path) -> None:
    """Raise ValueError unless ``recorded`` (the settings in a checkpoint or result.json of
    ``spec``'s folder) are ``spec``'s; settings older files lack take their defaults."""
    wanted = run_settings(spec)
    defaults = {
        **run_settings(RunSpec(spec.method, spec.k, spec.seed, spec.backbone)),
        "recipe": LEGACY_RECIPE,
    }
    found = {name: recorded.get(name, defaults[name]) for name in wanted}
    differing = [name for name in wanted if found[name] != wanted[name]]
    if differing:
        raise ValueError(
            f"{source} belongs to a run with "
            + ", ".join(f"{name}={found[name]!r}" for name in differing)
            + ", not "
            + ", ".join(f"{name}={wanted[name]!r}" for name in differing)
            + "; use another output folder (or delete it to start over)"
        )


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """This process's accelerate handle: the GPU if there is one, else the CPU; under
    ``torchrun`` / ``accelerate launch``, one rank of a DDP group (gloo on CPUs)."""
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision)


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train(
    spec: RunSpec,
    build_backbone: Callable[[], nn.Module],
    data: tuple[Split, Split, Split],
    objective: Objective,
    run_dir: Path,
    accelerator: Accelerator | None = None,
    before_epoch: Callable[[], None] = lambda: None,
    seconds_between_checkpoints: float = 300.0,
) -> RunResult:
    """Train one run in ``run_dir`` (resuming if it has a checkpoint); returns its result.

    ``build_backbone`` returns the model ``objective`` drives (built fresh, or the very
    model a generative wrapper holds); the method's parameters are added to it in place.
    ``before_epoch`` is called at the start of every epoch (a grid's worker takes its
    share of the cores there). A checkpoint is written after every dev evaluation, and
    after any epoch that ends ``seconds_between_checkpoints`` or more after the last one
    was written, so an interruption between the paper recipe's evaluations (10 epochs
    apart: 4.5 to 16 minutes of full fine-tuning at k = 1000 on the two-core machines
    measured, alone or beside another run) loses little.
    """
    path = run_dir / CHECKPOINT_FILE
    saved = checkpoint.load(path)
    if saved is not None:
        check_same_run(spec, saved.get("settings", {}), path)
    train_split, dev_split, test_split = data
    recipe = spec.training
    max_epochs = spec.max_epochs or recipe.max_epochs
    patience = recipe.patience_for(spec.dataset)
    accelerator = accelerator or make_accelerator(spec.mixed_precision)
    torch.manual_seed(spec.seed)
    options = dict(spec.adapter_options)
    model: Any = apply_method(
        build_backbone(), spec.method, spec.seed, options, recipe.adapter_activation
    )
    no_regularizer = RedundancyConfig(alpha=0.0, beta=0.0)
    regularizer = RedundancyRegularizer(model, regularizer_config(spec.method) or no_regularizer)
    trainable, total = parameter_counts(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(model, spec.learning_rate, recipe.weight_decay, recipe.adam_eps)
    steps_per_epoch = math.ceil(len(train_split) / recipe.batch_size)
    total_steps = max_epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_warmup_decay(step, total_steps, recipe.warmup)
    )
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device

    state, best, elapsed = TrainState(), trainable_state(model), 0.0
    if saved is not None:
        model.load_state_dict(saved["trainable"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        torch.set_rng_state(saved["rng"])
        if "cuda_rng" in saved:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        # checkpoints older than counted_best were written under ">" selection without a
        # delta, where the two bests are one
        recorded = {"counted_best": saved["state"]["best_dev"], **saved["state"]}
        state, best, elapsed = TrainState(**recorded), saved["best"], saved["elapsed"]
        if "routing" in saved:
            adapter_router(model).load_state_dict(saved["routing"])

    def out_of_patience() -> bool:
        return patience is not None and state.stale >= patience

    stopped_early = out_of_patience()  # a run that crashed after stopping
    last_checkpoint = time.monotonic()
    progress = tqdm(
        range(state.epoch, state.epoch if stopped_early else max_epochs),
        desc=f"{spec.method} k={spec.k} seed={spec.seed}",
        unit="epoch",
        disable=None if accelerator.is_main_process else True,  # None: only on a terminal
        mininterval=2.0,
    )
    for epoch in progress:
        before_epoch()
        started = time.perf_counter()
        order = torch.randperm(
            len(train_split), generator=torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
        )
        wrapped.train()
        epoch_loss = torch.zeros((), device=device)
        for start in range(0, len(order), recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            rows, weight = shard(batch, accelerator.process_index, accelerator.num_processes)
            with regularizer.recording():
                answer_loss, masks = objective.loss(wrapped, train_split, rows, epoch)
            extra, _ = regularizer.loss(masks)
            loss = answer_loss + extra
            if not torch.isfinite(loss):
                kept = (
                    f"The last good checkpoint is {path}"
                    if path.is_file()
                    else "No checkpoint was written yet (one is written at each dev evaluation)"
                )
                raise TrainingDiverged(
                    f"{spec.method} k={spec.k} seed={spec.seed}: loss is {loss.item()} in epoch "
                    f"{epoch}; stopped. {kept}"
                )
            accelerator.backward(loss * weight)
            accelerator.clip_grad_norm_(params, recipe.grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            epoch_loss += loss.detach()
        state.train_loss.append(epoch_loss.item() / steps_per_epoch)
        elapsed += time.perf_counter() - started
        state.epoch = epoch + 1
        validated = recipe.evaluates_after(epoch, max_epochs)
        if validated:
            dev = accuracy(objective, model, dev_split, keep_inputs=True)
            if update_selection(state, dev, epoch, recipe):
                best = trainable_state(model)
            progress.set_postfix(dev=f"{dev:.1f}", best=f"{state.best_dev:.1f}")
        elif time.monotonic() - last_checkpoint < seconds_between_checkpoints:
            continue
        last_checkpoint = time.monotonic()
        if accelerator.is_main_process:
            saved_state: dict[str, Any] = {
                "settings": run_settings(spec),
                "trainable": trainable_state(model),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": torch.get_rng_state(),
                "state": asdict(state),
                "best": best,
                "elapsed": elapsed,
            }
            if torch.cuda.is_available():
                saved_state["cuda_rng"] = torch.cuda.get_rng_state_all()
            if any(True for _ in mixphm_adapters(model)):
                saved_state["routing"] = adapter_router(model).state_dict()
            checkpoint.save_atomic(saved_state, path)
        if out_of_patience():
            break

    last_predictions = objective.predict(model, test_split)
    last_is_best = state.best_epoch == state.epoch - 1
    model.load_state_dict(best, strict=False)
    test_predictions = last_predictions if last_is_best else objective.predict(model, test_split)
    result = RunResult(
        method=spec.method,
        k=spec.k,
        seed=spec.seed,
        backbone=spec.backbone,
        dev_accuracy=state.best_dev,
        test_accuracy=prediction_accuracy(test_split, test_predictions),
        trainable_parameters=trainable,
        total_parameters=total,
        train_seconds=round(elapsed, 2),
        epochs=state.epoch,
        best_epoch=state.best_epoch,
        recipe=spec.recipe,
        last_test_accuracy=prediction_accuracy(test_split, last_predictions),
        test_questions=len(test_split),
        adapter_options=options,
        max_epochs=spec.max_epochs,
        mixed_precision=spec.mixed_precision,
        dataset=spec.dataset,
        lr=spec.learning_rate,
    )
    if accelerator.is_main_process:
        save_file({n: t.contiguous() for n, t in best.items()}, str(run_dir / BEST_FILE))
        if objective.answer_set is not None:
            write_json_atomic(list(objective.answer_set), run_dir / "answers.json")
        write_predictions(test_split, test_predictions, run_dir)
        write_json_atomic(training_history(state, recipe, max_epochs), run_dir / HISTORY_FILE)
        write_json_atomic(asdict(result), run_dir / "result.json")
    return result


def shard(batch: Tensor, rank: int, world: int) -> tuple[Tensor, float]:
    """This rank's rows of a batch (every ``world``-th, from ``rank``) and the weight of its
    mean loss, ``world`` × rows / batch, under which DDP's mean of the ranks' gradients is
    the gradient of the whole batch's mean loss, as in one process, also when a short last
    batch splits unevenly. A rank left without rows computes its loss on the batch's first
    row with weight 0, so it still joins the gradient all-reduce. (The redundancy
    regularizer, whose mutual-information term contrasts the samples of a batch, sees only
    the rank's own rows.)"""
    rows = batch[rank::world]
    if len(rows) == 0:
        return batch[:1], 0.0
    return rows, world * len(rows) / len(batch)


def training_history(state: TrainState, recipe: Recipe, max_epochs: int) -> dict[str, Any]:
    """The dev curve (the 1-based epochs after which dev was scored, and the scores) and
    every epoch's mean training loss: what a run's selection saw, kept beside its result."""
    dev_epochs = [e + 1 for e in range(state.epoch) if recipe.evaluates_after(e, max_epochs)]
    return {
        "dev_epochs": dev_epochs,
        "dev_accuracy": state.dev_history,
        "train_loss": state.train_loss,
    }


def write_predictions(split: Split, predicted: list[str], run_dir: Path) -> None:
    """``PREDICTIONS_FILE``: question id → predicted answer, in the split's order."""
    question_ids = [e.question_id for e in split.examples]
    write_json_atomic(dict(zip(question_ids, predicted, strict=True)), run_dir / PREDICTIONS_FILE)


def write_json_atomic(value: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(temporary, path)
