"""`maskgit convert-vqgan` and `maskgit convert-transformer`: released weights -> our folder format.

Thin adapters over `tokenizer.convert` (a taming `last.ckpt` + `model.yaml`) and `transformer.convert`
(a valeoai MaskGIT `.pth`): each file is read without running pickles, loaded strictly (bad keys
are named), and written as `config.json` + `model.safetensors`; the transformer gets the reference's
sampling settings for its resolution, so `maskgit sample` decodes it the way the reference's README does.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert-vqgan` and `convert-transformer` subcommands."""
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
    convert.set_defaults(run=run_convert_vqgan)

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
        default=16,
        help="attention heads (16 in every reference size; not in the shapes)",
    )
    convert.set_defaults(run=run_convert_transformer)


def run_convert_vqgan(args: argparse.Namespace) -> int:
    from tokenizer.checkpoint import weights_digest
    from tokenizer.convert import convert_taming_checkpoint

    out_dir = convert_taming_checkpoint(args.checkpoint, args.out_dir, config=args.config)
    print(f"wrote {out_dir} (weights sha256 {weights_digest(out_dir)})")
    return 0


def run_convert_transformer(args: argparse.Namespace) -> int:
    from transformer.checkpoint import load_state_dict_strictly, save_transformer
    from transformer.convert import read_reference_checkpoint
    from transformer.model import MaskTransformer

    reference = read_reference_checkpoint(
        args.checkpoint,
        num_classes=args.num_classes,
        codebook_size=args.codebook_size,
        num_heads=args.num_heads,
    )
    model = MaskTransformer(reference.config)
    load_state_dict_strictly(model, reference.state_dict, str(args.checkpoint))
    out_dir = save_transformer(model, args.out_dir, sampling=reference.sampling)
    config = reference.config
    print(
        f"wrote {out_dir}: {config.grid_size}x{config.grid_size} tokens, {config.codebook_size} codes, "
        f"{config.num_classes} classes, depth {config.depth}, width {config.hidden_size}"
        + (f", reference iteration {reference.iteration}" if reference.iteration is not None else "")
    )
    return 0
