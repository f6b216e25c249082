"""Runs on backbones and data the user brings: the paper's VL-T5 on region features, or a
Hugging Face VLM on images, with VQA v2 / GQA / OK-VQA split files in the LXMERT / VL-T5
JSON layout. Same protocol and recipe as the offline default; answers are generated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from mixphm.backbones.generation import Decoding
from mixphm.data import VQADataset, load_vlt5_vqa, sample_low_resource
from mixphm.data.examples import DataError, Metric
from mixphm.training.objectives import AnswerGeneration, GenerativeVQA
from mixphm.training.recipe import RunResult, RunSpec, make_accelerator, train

DATASET_METRICS: dict[str, Metric] = {"vqa-v2": "vqa", "ok-vqa": "vqa", "gqa": "exact"}
HF_PREFIX = "hf:"


@dataclass(frozen=True)
class ExternalData:
    """Split files of one dataset and where their visual input lives: region feature files
    for VL-T5, an image folder (``<img_id>.jpg``) for Hugging Face VLMs."""

    dataset: str
    train_files: tuple[Path, ...]
    test_files: tuple[Path, ...]
    features: tuple[Path, ...] = ()
    images: Path | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_METRICS:
            known = ", ".join(DATASET_METRICS)
            raise DataError(f"unknown dataset {self.dataset!r}; with files: {known}")
        if not self.train_files or not self.test_files:
            raise DataError(f"{self.dataset} needs --train-file and --test-file")

    def load(self, files: tuple[Path, ...], split: str) -> VQADataset:
        """The files' questions as one split (e.g. val2014 = nominival + minival)."""
        metric = DATASET_METRICS[self.dataset]
        parts = [
            load_vlt5_vqa(
                f,
                images=self.images,
                features=list(self.features) or None,
                name=self.dataset,
                metric=metric,
            )
            for f in files
        ]
        examples = [e for part in parts for e in part.examples]
        source = ", ".join(str(f) for f in files)
        return VQADataset(
            self.dataset, split, examples, parts[0].visual, parts[0].metric, 0, source
        )


def build_generative(backbone: str, checkpoint: Path | None, tokenizer: str) -> GenerativeVQA:
    """``vlt5`` (from ``checkpoint``, with ``tokenizer``) or ``hf:<hub id or local dir>``."""
    if backbone == "vlt5":
        from mixphm.backbones.vlt5 import VLT5VQA

        if checkpoint is None:
            raise ValueError("--backbone vlt5 needs --checkpoint (the released VL-T5 .pth)")
        return VLT5VQA.from_checkpoint(checkpoint, tokenizer)
    if backbone.startswith(HF_PREFIX):
        from mixphm.backbones.hf_vlm import HFVisionQA

        return HFVisionQA.from_pretrained(backbone.removeprefix(HF_PREFIX))
    raise ValueError(f"unknown generative backbone {backbone!r}; use vlt5 or hf:<model>")


def run_external(
    spec: RunSpec,
    pool: VQADataset,
    test: VQADataset,
    checkpoint: Path | None,
    tokenizer: str,
    decoding: Decoding,
    run_dir: Path,
    accelerator: Accelerator | None = None,
) -> RunResult:
    """One run of the protocol: k questions to train and k for dev sampled from ``pool``
    with the seed, the best-dev weights scored on ``test``."""
    sampled = sample_low_resource(pool, spec.k, spec.seed)
    vqa = build_generative(spec.backbone, checkpoint, tokenizer)
    objective = AnswerGeneration(vqa, spec.seed, decoding)
    splits = (sampled.train, sampled.dev, test)
    return train(spec, lambda: vqa.model, splits, objective, run_dir, accelerator)


@contextmanager
def group_training_lock(out: Path, accelerator: Accelerator) -> Iterator[None]:
    """``out``'s training lock (``benchmark.training_lock``) for a whole DDP group: the main
    process holds it, and if another process holds it every rank is refused together (a
    rank left to go on alone would wait forever for the others)."""
    from mixphm.experiments.benchmark import training_lock

    with ExitStack() as held:
        refusal: list[str | None] = [None]
        if accelerator.is_main_process:
            try:
                held.enter_context(training_lock(out))
            except RuntimeError as error:
                refusal = [str(error)]
        broadcast_object_list(refusal)
        if refusal[0] is not None:
            raise RuntimeError(refusal[0])
        yield


def run_external_grid(
    specs: list[RunSpec],
    data: ExternalData,
    checkpoint: Path | None,
    tokenizer: str,
    decoding: Decoding,
    out: Path,
) -> list[RunResult] | None:
    """Every spec without a result yet, one after another on one accelerator (one device,
    or DDP under ``torchrun`` / ``accelerate launch``; the specs share one precision);
    finished runs are skipped, interrupted ones resume. The split files are read once for
    the whole grid. Returns every finished run under ``out`` in the main process (which
    alone reports and writes ``runs.csv``), None in the others. The process group is torn
    down on the way out, finished or refused: a gloo rank that exits with its group alive
    can abort ("terminate called without an active exception") after its work is done."""
    from mixphm.experiments.benchmark import collect, pending, report, run_dir

    accelerator = make_accelerator(specs[0].mixed_precision)
    main = accelerator.is_main_process
    try:
        todo = pending(specs, out, say=main)
        if todo:
            with group_training_lock(out, accelerator):
                pool = data.load(data.train_files, "train")
                test = data.load(data.test_files, "test")
                for spec in todo:
                    directory = run_dir(out, spec)
                    result = run_external(
                        spec, pool, test, checkpoint, tokenizer, decoding, directory, accelerator
                    )
                    if main:
                        report(result)
    finally:
        accelerator.end_training()
    return collect(out) if main else None
