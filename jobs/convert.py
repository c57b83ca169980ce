"""`maskgit convert-vqgan` and `maskgit convert-transformer`: released weights -> our folder format.

Thin adapters over `tokenizer.convert` (a taming `last.ckpt` + `model.yaml`) and `transformer.convert`
(a valeoai MaskGIT `.pth`): each file is read without running pickles, loaded strictly (bad keys
are named), and written as `config.json` + `model.safetensors`; the transformer gets the reference's
sampling settings for its resolution, so `maskgit sample` decodes it the way the reference's README does.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from jobs.options import options_from_args

if TYPE_CHECKING:
    from transformer.config import HaltonConfig, TransformerConfig


@dataclass(frozen=True)
class ConvertVqganOptions:
    """Settings of `maskgit convert-vqgan`.

    Attributes:
        checkpoint: taming `last.ckpt` (or a bare state-dict `.pt`).
        out_dir: output folder for `config.json` + `model.safetensors`.
        config: taming `model.yaml` (None: beside the checkpoint, or `../configs/model.yaml`).
    """

    checkpoint: str
    out_dir: str
    config: str | None = None


@dataclass(frozen=True)
class ConvertTransformerOptions:
    """Settings of `maskgit convert-transformer`.

    Attributes:
        checkpoint: valeoai `.pth` with a `model_state_dict` (or a bare state dict).
        out_dir: output folder.
        num_classes: classes C, only for vocabularies other than the released 2026 entries.
        codebook_size: codes K, alternatively to `num_classes`.
        num_heads: attention heads, for a file of a non-reference size only (v1 sizes all use 16; each v2
            reference width has its own); None: the reference's.
    """

    checkpoint: str
    out_dir: str
    num_classes: int | None = None
    codebook_size: int | None = None
    num_heads: int | None = None


class VqganConversion(NamedTuple):
    """Where the converted VQGAN went and the sha256 of its weights."""

    out_dir: Path | str
    weights_sha256: str


class TransformerConversion(NamedTuple):
    """Where the converted transformer went, and its config."""

    out_dir: Path | str
    config: TransformerConfig | HaltonConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert-vqgan` and `convert-transformer` subcommands; flag dests are option fields."""
    convert = subparsers.add_parser(
        "convert-vqgan",
        help="convert a tokenizer checkpoint (taming last.ckpt + model.yaml, or LlamaGen vq_ds16_c2i.pt) "
        "into our format",
        description="Read a taming/valeoai Lightning last.ckpt (loss.* keys ignored) or a LlamaGen VQ "
        "checkpoint (the v2 tokenizer, told apart by its keys) strictly and write "
        "OUT_DIR/config.json + OUT_DIR/model.safetensors.",
    )
    convert.add_argument(
        "checkpoint", help="taming last.ckpt, LlamaGen vq_ds16_c2i.pt, or a bare state-dict .pt"
    )
    convert.add_argument("out_dir", help="output folder for config.json + model.safetensors")
    convert.add_argument(
        "--config",
        help="taming model.yaml (default: beside the checkpoint, or ../configs/model.yaml)",
    )
    convert.set_defaults(run=_run_convert_vqgan)

    convert = subparsers.add_parser(
        "convert-transformer",
        help="convert a valeoai MaskGIT transformer checkpoint (.pth) into our folder format",
        description="Read MaskGIT_ImageNet_256.pth / _512.pth (or another valeoai v1 transformer .pth) "
        "strictly and write OUT_DIR/config.json + OUT_DIR/model.safetensors, with the reference's sampling "
        "defaults for its resolution.",
    )
    convert.add_argument("checkpoint", help="valeoai .pth with a 'model_state_dict' (or a bare state dict)")
    convert.add_argument("out_dir", help="output folder")
    convert.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes C, only for vocabularies other than the released 2026",
    )
    convert.add_argument(
        "--codebook-size", type=int, default=None, help="codes K, alternatively to --num-classes"
    )
    convert.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="attention heads, only for a non-reference size (not in the shapes; default: the reference's)",
    )
    convert.set_defaults(run=_run_convert_transformer)


def run_convert_vqgan(options: ConvertVqganOptions) -> VqganConversion:
    """Read a taming VQGAN checkpoint strictly and write it in our folder format."""
    from tokenizer.checkpoint import load_tokenizer, save_vqgan, weights_digest

    out_dir = save_vqgan(load_tokenizer(options.checkpoint, config=options.config), options.out_dir)
    return VqganConversion(out_dir, weights_digest(out_dir))


def run_convert_transformer(options: ConvertTransformerOptions) -> TransformerConversion:
    """Read a valeoai transformer `.pth` (v1 MaskGIT or v2 Halton-MaskGIT, told apart by its keys)
    strictly and write it in our folder format, with the reference's sampling settings for it."""
    from transformer.checkpoint import load_transformer, save_transformer
    from transformer.families import reference_sampling

    model = load_transformer(
        options.checkpoint,
        num_classes=options.num_classes,
        codebook_size=options.codebook_size,
        num_heads=options.num_heads,
    )
    out_dir = save_transformer(model, options.out_dir, sampling=reference_sampling(model.config))
    return TransformerConversion(out_dir, model.config)


def _run_convert_vqgan(args: argparse.Namespace) -> int:
    result = run_convert_vqgan(options_from_args(ConvertVqganOptions, args))
    print(f"wrote {result.out_dir} (weights sha256 {result.weights_sha256})")
    return 0


def _run_convert_transformer(args: argparse.Namespace) -> int:
    result = run_convert_transformer(options_from_args(ConvertTransformerOptions, args))
    config = result.config
    print(
        f"wrote {result.out_dir}: {config.family} family, {config.grid_size}x{config.grid_size} tokens, "
        f"{config.codebook_size} codes, {config.num_classes} classes, depth {config.depth}, "
        f"width {config.hidden_size}"
    )
    return 0
