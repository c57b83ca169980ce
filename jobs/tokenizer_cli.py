"""`maskgit convert-vqgan` and `maskgit train-tokenizer`: the tokenizer's command-line entry points.

Thin adapters over `tokenizer.convert` and `tokenizer.train`; heavy imports stay inside the run
functions so `maskgit --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the tokenizer subcommands."""
    convert = subparsers.add_parser(
        "convert-vqgan",
        help="convert a taming-transformers VQGAN checkpoint (last.ckpt + model.yaml) into our format",
        description="Read a taming/valeoai Lightning last.ckpt strictly (loss.* keys ignored) and write "
        "OUT_DIR/config.json + OUT_DIR/model.safetensors.",
    )
    convert.add_argument("checkpoint", help="taming last.ckpt (or a bare state-dict .pt)")
    convert.add_argument("out_dir", help="output folder for config.json + model.safetensors")
    convert.add_argument(
        "--config",
        help="taming model.yaml (default: beside the checkpoint, or ../configs/model.yaml)",
    )
    convert.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from tokenizer.checkpoint import weights_digest
    from tokenizer.convert import convert_taming_checkpoint

    out_dir = convert_taming_checkpoint(args.checkpoint, args.out_dir, config=args.config)
    print(f"wrote {out_dir} (weights sha256 {weights_digest(out_dir)})")
    return 0
