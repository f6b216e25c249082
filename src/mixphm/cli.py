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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from mixphm import demo

            demo.run(args.output, tuple(args.presets))
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"mixphm {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
