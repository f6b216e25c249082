"""The ``mixphm`` command line: a thin layer over the library's recipes."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mixphm.config import PRESETS
from mixphm.data import K_VALUES, SEEDS, load_easy_vqa, sample_low_resource
from mixphm.training.choices import BACKBONES, METHODS
from mixphm.training.recipes import DEFAULT_RECIPE, RECIPES, get_recipe

DEFAULT_METHODS = ["mixphm", "pfeiffer", "lora", "full"]


GENERATIVE = ("vlt5", "hf:<model>")
EXTERNAL_DATASETS = ("vqa-v2", "gqa", "ok-vqa")


def backbone(text: str) -> str:
    """An offline backbone, ``vlt5``, or ``hf:<hub id or local dir>``."""
    if text in BACKBONES or text == "vlt5" or (text.startswith("hf:") and len(text) > 3):
        return text
    choices = ", ".join((*BACKBONES, *GENERATIVE))
    raise argparse.ArgumentTypeError(f"unknown backbone {text!r}; choose one of {choices}")


def adapter_option(text: str) -> tuple[str, Any]:
    """``name=value`` for a MixPHMConfig field; the value is read as JSON (0.0, 1, null)."""
    import json

    from mixphm.config import MixPHMConfig

    name, sep, value = text.partition("=")
    fields = MixPHMConfig.__dataclass_fields__
    if not sep or name not in fields:
        raise argparse.ArgumentTypeError(
            f"expected name=value with a MixPHMConfig field ({', '.join(fields)}), got {text!r}"
        )
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def adapter_variant(text: str) -> tuple[tuple[str, Any], ...]:
    """``name=value[+name=value...]``: the adapter options of one variant of a grid;
    ``preset`` is the method's preset itself."""
    if text == "preset":
        return ()
    return tuple(adapter_option(part) for part in text.split("+"))


def question_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the question is empty")
    return text


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def finished_run_arguments(parser: argparse.ArgumentParser, fit_loss: bool = False) -> None:
    """The options of a command that reads finished runs: which runs, and (``fit_loss``)
    the training loss below which a run counts as fitted."""
    parser.add_argument(
        "--run", type=Path, nargs="+", required=True, help="run folders, or folders holding runs"
    )
    parser.add_argument("--ks", type=int, nargs="+", help="only runs with these k")
    parser.add_argument("--seeds", type=int, nargs="+", help="only runs with these seeds")
    if fit_loss:
        parser.add_argument(
            "--fit-loss",
            type=positive_float,
            default=0.1,
            help="training loss below which a run counts as fitted (default 0.1)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixphm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="adapter presets on the packaged MiniLM: train, merge, save, reload"
    )
    demo.add_argument("--output", type=Path, default=Path("results/demo"))
    demo.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))

    analyze = commands.add_parser(
        "analyze", help="redundancy per layer: CKA(h, h_a) on the default backbone"
    )
    analyze.add_argument("--run", type=Path, nargs="+", default=[], help="finished run folders")
    analyze.add_argument("--fresh", nargs="+", default=[], choices=PRESETS, help="fresh presets")
    analyze.add_argument("--samples", type=int, default=512, help="easy-VQA test questions")
    analyze.add_argument("--output", type=Path, default=Path("results/analysis"))

    experts = commands.add_parser(
        "experts", help="dev accuracy of finished runs: merged mixture versus each expert"
    )
    experts.add_argument("--run", type=Path, nargs="+", required=True, help="run folders")
    experts.add_argument("--output", type=Path, default=Path("results/experts"))

    breakdown = commands.add_parser(
        "breakdown", help="test accuracy of finished runs per answer type, and answer collapse"
    )
    finished_run_arguments(breakdown)
    breakdown.add_argument("--output", type=Path, default=Path("results/breakdown"))

    curves = commands.add_parser(
        "curves",
        help="how finished runs trained: when they fitted, what started their patience count, "
        "kept against last checkpoint (from history.json; dev and training loss only)",
    )
    finished_run_arguments(curves, fit_loss=True)
    curves.add_argument("--output", type=Path, default=Path("results/curves"))

    compare = commands.add_parser(
        "compare",
        help="finished runs against a reference, seed by seed: paired test and dev "
        "differences with 95%% intervals, when each fitted, and mean training-loss curves",
    )
    finished_run_arguments(compare, fit_loss=True)
    compare.add_argument(
        "--reference", required=True, help="the variant to compare against, e.g. mixphm"
    )
    compare.add_argument("--output", type=Path, default=Path("results/compare"))

    commands.add_parser("pretrain", help="build (once) and cache the pretrained offline backbone")

    for name, helptext in (
        ("train", "train one method at one k and seed (offline default, VL-T5 or hf:<model>)"),
        ("benchmark", "methods × k × seeds (resumable); writes the table and plots"),
    ):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("--dataset", choices=["easy-vqa", *EXTERNAL_DATASETS], default="easy-vqa")
        sub.add_argument(
            "--recipe",
            choices=list(RECIPES),
            default=DEFAULT_RECIPE,
            help=f"training recipe (default {DEFAULT_RECIPE}, the paper's; quick-v1 is a short "
            "one for quick runs); an output folder holds one recipe's runs",
        )
        sub.add_argument(
            "--out", type=Path, help="output folder (default results/<dataset>-<recipe>)"
        )
        sub.add_argument(
            "--test-limit",
            type=positive_int,
            help="test questions, a fixed sample (quick-v1 only; default 2000 there)",
        )
        sub.add_argument(
            "--full-test", action="store_true", help="evaluate on the whole test split"
        )
        sub.add_argument("--max-epochs", type=positive_int, help="override the recipe's cap")
        sub.add_argument(
            "--lr",
            type=positive_float,
            help="learning rate for every method, overriding each one's own "
            "(configs/methods.toml); runs at another rate get folders and table rows of their own",
        )
        sub.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
        sub.add_argument(
            "--adapter-option",
            type=adapter_option,
            action="append",
            default=[],
            help="override a field of the method's adapter preset, e.g. dropout=0.0 (ablations)",
        )
        files = sub.add_argument_group(
            "your own backbone and data (VL-T5 or a Hugging Face VLM on VQA v2, GQA, OK-VQA)"
        )
        files.add_argument("--train-file", type=Path, nargs="+", default=[])
        files.add_argument("--test-file", type=Path, nargs="+", default=[])
        files.add_argument("--features", type=Path, nargs="+", default=[], help="*_obj36.h5")
        files.add_argument("--images", type=Path, help="folder of <img_id>.jpg")
        files.add_argument("--checkpoint", type=Path, help="VL-T5 weights (Epoch30.pth)")
        files.add_argument("--tokenizer", default="t5-base", help="VL-T5's T5 tokenizer")
        files.add_argument("--num-beams", type=positive_int, default=1)
        files.add_argument("--max-new-tokens", type=positive_int, default=10)
        if name == "train":
            sub.add_argument("--backbone", type=backbone, default="pretrained")
            sub.add_argument("--method", choices=METHODS, required=True)
            sub.add_argument("--k", type=positive_int, required=True)
            sub.add_argument("--seed", type=int, default=13)
        else:
            sub.add_argument("--backbones", nargs="+", type=backbone, default=["pretrained"])
            sub.add_argument("--methods", nargs="+", choices=METHODS, default=DEFAULT_METHODS)
            sub.add_argument("--ks", nargs="+", type=positive_int, default=[16, 64])
            sub.add_argument("--seeds", nargs="+", type=int, default=[13])
            sub.add_argument(
                "--variants",
                nargs="+",
                type=adapter_variant,
                default=[()],
                metavar="NAME=VALUE[+NAME=VALUE]",
                help="a grid axis of adapter variants (ablations), each a set of adapter "
                "options on top of --adapter-option, e.g. preset dropout=0.0 num_experts=1",
            )
            sub.add_argument(
                "--reuse",
                type=Path,
                nargs="+",
                default=[],
                metavar="FOLDER",
                help="output folders of other grids (same recipe): a run finished there with "
                "the very same settings is not trained again and joins this table (read only)",
            )
            sub.add_argument("--workers", type=positive_int, default=2)
            sub.add_argument(
                "--zero-shot", action="store_true", help="also score the backbone at k = 0"
            )
            nothing = sub.add_mutually_exclusive_group()
            nothing.add_argument(
                "--summarize-only",
                action="store_true",
                help="train nothing: rebuild runs.csv, summary.md and the plots from finished runs",
            )
            nothing.add_argument(
                "--estimate-only",
                action="store_true",
                help="train and write nothing: print how many runs of the grid are left and "
                "the training time they need, estimated from the finished runs",
            )
    select = commands.add_parser(
        "select-lr",
        help="choose each method's learning rate on dev: its rate grid (configs/methods.toml) "
        "at one k and a few seeds, the highest mean best-dev score (resumable)",
    )
    select.add_argument("--recipe", choices=list(RECIPES), default=DEFAULT_RECIPE)
    select.add_argument("--out", type=Path, default=Path("results/lr-selection-paper-v1"))
    select.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    select.add_argument("--k", type=positive_int, default=64)
    select.add_argument("--seeds", nargs="+", type=int, default=[13, 21, 42])
    select.add_argument(
        "--reuse",
        type=Path,
        nargs="+",
        default=[],
        metavar="FOLDER",
        help="benchmark output folders whose finished runs with the same settings count",
    )
    select.add_argument("--workers", type=positive_int, default=2)
    nothing = select.add_mutually_exclusive_group()
    nothing.add_argument(
        "--summarize-only",
        action="store_true",
        help="train nothing: write the selection from the finished runs",
    )
    nothing.add_argument(
        "--estimate-only",
        action="store_true",
        help="train and write nothing: print the runs left and the training time they need",
    )
    predict = commands.add_parser(
        "predict", help="answer a question about an image with a finished run"
    )
    predict.add_argument("--run", type=Path, required=True, help="a run folder (has result.json)")
    predict.add_argument("--image", type=Path, required=True)
    predict.add_argument("--question", type=question_text, required=True)
    return parser


RESUMABLE = ("train", "benchmark", "select-lr")
INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT, as a shell)."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            run(args, "mixphm " + shlex.join(argv))
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"mixphm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = (
            "; finished runs are kept, and the same command resumes an unfinished run from "
            "its last finished epoch"
        )
        print(
            f"mixphm {args.command}: interrupted{resume if args.command in RESUMABLE else ''}",
            file=sys.stderr,
        )
        return INTERRUPTED
    return 0


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler's time limit) stops the command as Ctrl-C does,
    so its worker processes are stopped too rather than left running."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, command: str) -> None:
    if args.command == "demo":
        from mixphm import demo

        demo.run(args.output, tuple(args.presets))
    elif args.command == "analyze":
        from mixphm import analysis

        if args.samples < 1:
            raise ValueError(f"--samples must be ≥ 1, got {args.samples}")
        analysis.analyze(args.run, args.fresh, args.samples, args.output, command)
    elif args.command == "predict":
        from mixphm.training.predict import answer

        for text, probability in answer(args.run, args.image, args.question):
            print(f"{probability:6.1%}  {text}")
    elif args.command == "experts":
        from mixphm.experiments.experts import diagnose, format_diagnosis

        table = format_diagnosis(diagnose(args.run))
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "experts.md").write_text(
            f"Produced by `{command}`. Dev accuracy (%) on each run's own D_dev:\n\n"
            f"```\n{table}\n```\n"
        )
        print(table)
    elif args.command == "breakdown":
        from mixphm.experiments.breakdown import breakdown, format_breakdown

        runs = breakdown(args.run, ks=args.ks, seeds=args.seeds)
        table = format_breakdown(runs)
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "breakdown.md").write_text(
            f"Produced by `{command}` from {len(runs)} runs. Test accuracy (%), means over "
            "seeds; per answer type: accuracy / share (%) of its questions given the most "
            f"frequent predicted answer.\n\n{table}\n"
        )
        print(table)
    elif args.command == "curves":
        write_curves(args, command)
    elif args.command == "compare":
        write_comparison(args, command)
    elif args.command == "pretrain":
        from mixphm.pretraining.recipe import PretrainConfig, checkpoint_dir, pretrained_backbone

        pretrained_backbone()
        print(f"pretrained backbone: {checkpoint_dir(PretrainConfig())}")
    elif args.command in ("train", "benchmark"):
        train_or_benchmark(args, command)
    elif args.command == "select-lr":
        select_lr(args, command)


def select_lr(args: argparse.Namespace, command: str) -> None:
    from mixphm.experiments import benchmark, lr_selection

    specs = lr_selection.selection_specs(args.methods, args.k, args.seeds, args.recipe)
    if args.estimate_only:
        print(benchmark.grid_estimate(specs, args.out, args.workers, args.reuse))
        return
    if args.summarize_only:
        reused = benchmark.reused_results(specs, args.out, args.reuse)
        results = benchmark.collect(args.out, args.recipe, reused)
    else:
        sample_low_resource(load_easy_vqa("train"), args.k, args.seeds[0])  # k fits the pool
        test_limit = get_recipe(args.recipe).test_limit
        results = benchmark.run_grid(specs, args.out, test_limit, args.workers, args.reuse)
    scores = lr_selection.dev_scores(results, args.methods)
    written = lr_selection.write_selection(scores, args.seeds, args.k, args.out, command)
    print(written[1].read_text())


def write_curves(args: argparse.Namespace, command: str) -> None:
    from mixphm.experiments.curves import curves, format_curves, plot_curves

    runs, without_history = curves(args.run, ks=args.ks, seeds=args.seeds)
    if not runs:
        raise FileNotFoundError(
            f"none of the {len(without_history)} finished runs found has a history.json "
            "(runs trained before runs kept their curves)"
        )
    table = format_curves(runs, args.fit_loss)
    left_out = "".join(f"\n- {path}" for path in without_history)
    if left_out:
        left_out = f"\n\nFinished runs without a history.json, left out:{left_out}"
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "curves.md").write_text(
        f"Produced by `{command}` from {len(runs)} runs. Test accuracy (%) of the kept "
        "(best-dev) and the last checkpoint; epochs are 1-based; the patience count starts at "
        "the last dev evaluation that improved by more than the recipe's delta.\n\n"
        f"{table}{left_out}\n"
    )
    plots = plot_curves(runs, args.output)
    print(table + left_out)
    print(f"written: {args.output / 'curves.md'}, " + ", ".join(str(p) for p in plots))


def write_comparison(args: argparse.Namespace, command: str) -> None:
    from mixphm.experiments.paired import format_comparison, load_scores, plot_mean_loss

    runs = load_scores(args.run, ks=args.ks, seeds=args.seeds)
    if args.reference not in {r.variant for r in runs}:
        raise ValueError(
            f"no finished run of the reference {args.reference!r} among the "
            f"{len(runs)} runs found; variants found: "
            + ", ".join(sorted({r.variant for r in runs}))
        )
    table = format_comparison(runs, args.reference, args.fit_loss)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "compare.md").write_text(
        f"Produced by `{command}` from {len(runs)} runs. Test and dev accuracy (%) of the "
        "best-dev checkpoint, mean ± std over seeds; differences are paired by seed (the "
        f"seeds both have) against {args.reference}, their mean with a 95% Student-t "
        "interval; fitted epochs are 1-based (–: the run kept no training loss).\n\n"
        f"{table}\n"
    )
    plots = plot_mean_loss(runs, args.reference, args.output)
    print(table)
    print(f"written: {args.output / 'compare.md'}, " + ", ".join(str(p) for p in plots))


def train_or_benchmark(args: argparse.Namespace, command: str) -> None:
    from mixphm.experiments import benchmark
    from mixphm.training.methods import adapter_config
    from mixphm.training.recipe import RunSpec

    base = tuple(args.adapter_option)
    if args.command == "train":
        grid = [(args.backbone, args.method, args.k, args.seed, base)]
    else:
        # k-major order: an interrupted grid leaves whole columns, every method alike
        grid = [
            (b, m, k, s, tuple(dict(base + variant).items()))
            for k in args.ks
            for s in args.seeds
            for m in args.methods
            for variant in args.variants
            for b in args.backbones
        ]
    offline = args.dataset == "easy-vqa"
    args.out = args.out or Path(f"results/{args.dataset}-{args.recipe}")
    for name in {b for b, *_ in grid}:
        if (name in BACKBONES) != offline:
            raise ValueError(
                f"backbone {name} does not run on {args.dataset}: the offline backbones "
                f"({', '.join(BACKBONES)}) take --dataset easy-vqa; vlt5 and hf:<model> take "
                f"{', '.join(EXTERNAL_DATASETS)} with --train-file and --test-file"
            )
    specs = [
        RunSpec(
            m,
            k,
            s,
            b,
            args.max_epochs,
            args.mixed_precision,
            options,
            args.recipe,
            args.dataset,
            args.lr,
        )
        for b, m, k, s, options in grid
    ]
    for spec in specs:  # bad adapter options fail here, before any data or model is built
        adapter_config(spec.method, spec.seed, dict(spec.adapter_options))
    label = "easy-VQA" if offline else args.dataset
    if getattr(args, "estimate_only", False):
        print(benchmark.grid_estimate(specs, args.out, args.workers, args.reuse))
        return
    results: list[Any] | None
    if getattr(args, "summarize_only", False):
        reused = benchmark.reused_results(specs, args.out, args.reuse)
        results = benchmark.collect(args.out, args.recipe, reused)
    elif offline:
        results = run_offline(args, specs)
    else:
        results = run_files(args, specs)
    if results is None:  # another process of a distributed launch; the main one reports
        return
    summary = benchmark.write_summary(results, args.out, command, label)
    for name in sorted({spec.backbone for spec in specs}):
        benchmark.plot(results, args.out, name, dataset=label)
    print(summary.read_text())
    if args.recipe != DEFAULT_RECIPE:
        print(
            f"note: trained under the {args.recipe} recipe, not the paper's ({DEFAULT_RECIPE}); "
            "its numbers are not comparable to the paper's"
        )
    if any(s not in SEEDS for _, _, _, s, _ in grid):
        print(f"note: the paper's seeds are {SEEDS}")
    if any(k not in K_VALUES for _, _, k, _, _ in grid):
        print(f"note: the paper's k values are {K_VALUES}")


def run_offline(args: argparse.Namespace, specs: list[Any]) -> list[Any]:
    from mixphm.experiments import benchmark

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "the offline backbones train in worker processes of their own (--workers); run "
            "mixphm without torchrun or accelerate launch, which are for vlt5 and hf:<model>"
        )
    test_limit = test_questions(args)
    pool = load_easy_vqa("train")
    for spec in specs:  # bad k fails here, before any model or feature is built
        sample_low_resource(pool, spec.k, spec.seed)
    if args.command == "benchmark" and args.zero_shot:
        for name in args.backbones:
            benchmark.zero_shot(name, args.out, test_limit, args.recipe)
    if args.command == "benchmark":
        return benchmark.run_grid(specs, args.out, test_limit, args.workers, args.reuse)
    return benchmark.run_grid(specs, args.out, test_limit)


def test_questions(args: argparse.Namespace) -> int | None:
    """The size of the offline test sample (None: the whole split): the recipe's, unless
    ``--full-test`` or ``--test-limit`` (the short recipe only) says otherwise."""
    recipe = get_recipe(args.recipe)
    if args.test_limit is not None and recipe.test_limit is None:
        raise ValueError(
            f"the {recipe.name} recipe tests on the whole test split, as the protocol says; "
            "--test-limit is for the quick-v1 recipe"
        )
    if args.full_test:
        return None
    return args.test_limit or recipe.test_limit


def run_files(args: argparse.Namespace, specs: list[Any]) -> list[Any] | None:
    from mixphm.backbones.generation import Decoding
    from mixphm.experiments.external import ExternalData, run_external_grid

    data = ExternalData(
        args.dataset,
        tuple(args.train_file),
        tuple(args.test_file),
        tuple(args.features),
        args.images,
    )
    decoding = Decoding(args.max_new_tokens, args.num_beams)
    return run_external_grid(specs, data, args.checkpoint, args.tokenizer, decoding, args.out)


if __name__ == "__main__":
    sys.exit(main())
