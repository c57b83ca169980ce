"""The `maskgit` command line: one subcommand per stage of the pipeline.

Each module in `COMMAND_MODULES` exposes `register(subparsers)`, which adds its subcommands with
`parser.set_defaults(run=...)`. Modules keep heavy imports (torch, ray, deepspeed) inside their run
functions so `maskgit --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = (  # in pipeline order, which is the order `maskgit --help` lists them
    "jobs.quickstart.command",
    "jobs.convert",
    "jobs.train_tokenizer",
    "jobs.tokenize",
    "jobs.train.driver",
    "jobs.train.export",
    "jobs.sample",
    "jobs.serve.app",
    "jobs.evaluate.job",
    "jobs.evaluate.fid_stats",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskgit",
        description="Tokenize-then-train MaskGIT: VQGAN tokenizer, Ray tokenization, DeepSpeed training, "
        "sampling, serving and evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, PermissionError) as error:
        # Bad input: one clear line, no traceback. Anything else is a bug and keeps its traceback.
        print(f"maskgit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
