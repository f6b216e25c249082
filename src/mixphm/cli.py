"""The ``mixphm`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixphm.config import PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixphm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="every adapter preset on the packaged MiniLM: train, merge, save, reload"
    )
    demo.add_argument("--output", type=Path, default=Path("results/demo"))
    demo.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    analyze = commands.add_parser(
        "analyze",
        help="redundancy per layer: linear CKA between adapter and pretrained representations",
    )
    analyze.add_argument("--adapter", type=Path, action="append", default=[], help="saved adapter")
    analyze.add_argument(
        "--fresh", action="append", default=[], choices=PRESETS, help="freshly initialised preset"
    )
    analyze.add_argument("--samples", type=int, default=512, help="easy-VQA test questions")
    analyze.add_argument("--output", type=Path, default=Path("results/analysis"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from mixphm import demo

            demo.run(args.output, tuple(args.presets))
        elif args.command == "analyze":
            from mixphm import analysis

            if args.samples < 1:
                raise ValueError(f"--samples must be ≥ 1, got {args.samples}")
            analysis.analyze_default_backbone(args.adapter, args.fresh, args.samples, args.output)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"mixphm {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
