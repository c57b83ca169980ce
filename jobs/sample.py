"""`maskgit sample`: class-conditional samples or an inpainting edit, written as one PNG grid.

A thin adapter: the tokenizer (`tokenizer.load_vqgan`) and the transformer
(`transformer.load_transformer`) are loaded, `transformer.sample` / `transformer.inpaint` do the
decoding, and this module only moves between pixels and tokens. Sampling knobs not given on the
command line come from the `SamplingConfig` stored with the transformer ("configs travel with
weights"). Every sample has its own seed (`--seed` + its index), so the images do not depend on
`--batch-size`.

Inpainting (`--image` + `--box`) follows the JAX demo (maskgit_spec.md §E): the pixel box becomes a
token box widened by `--margin` tokens, those tokens are regenerated for `--class-id`, and the result
is blended into the original pixels through the upsampled token mask, Gaussian-blurred with radius
image_size/16 − 1: out = generated·m + input·(1 − m). `--steps 12 --start-step 2` reproduces the
demo's class-guided editing schedule.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sample` subcommand."""
    parser = subparsers.add_parser(
        "sample",
        help="sample class-conditional images (or inpaint a box of an image) and write a PNG grid",
        description="Decode token grids with MaskGIT's iterative sampler and the VQGAN decoder. "
        "Without --image, writes one row per class; with --image and --box, regenerates the box and writes "
        "the original followed by the edited variants.",
    )
    parser.add_argument("--transformer", required=True, help="transformer folder (ours) or a valeoai .pth")
    parser.add_argument("--tokenizer", required=True, help="VQGAN folder (ours) or a taming checkpoint")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument(
        "--classes", type=int, nargs="+", default=None, help="class ids (default: 0..min(C,10)-1)"
    )
    parser.add_argument("--per-class", type=int, default=4, help="samples per class (or edited variants)")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    parser.add_argument("--batch-size", type=int, default=16, help="samples decoded together")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="autocast dtype")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    knobs = parser.add_argument_group("sampling (defaults: the SamplingConfig stored with the transformer)")
    knobs.add_argument("--steps", type=int, default=None)
    knobs.add_argument(
        "--schedule", default=None, help="arccos, cosine, linear, square, root, jax-cosine, ..."
    )
    knobs.add_argument(
        "--temperature", type=float, default=None, help="divides the logits (reference sm_temp = 1/t)"
    )
    knobs.add_argument("--gumbel-temperature", type=float, default=None, help="initial Gumbel noise scale")
    knobs.add_argument("--cfg-weight", type=float, default=None, help="classifier-free guidance weight")
    knobs.add_argument("--cfg-schedule", choices=("linear", "constant"), default=None)
    knobs.add_argument("--start-step", type=int, default=0, help="start later in the schedule (editing)")
    edit = parser.add_argument_group("inpainting")
    edit.add_argument("--image", default=None, help="image file to edit")
    edit.add_argument(
        "--box", type=int, nargs=4, metavar=("TOP", "LEFT", "HEIGHT", "WIDTH"), help="pixel box to regenerate"
    )
    edit.add_argument("--class-id", type=int, default=None, help="class to condition the edit on")
    edit.add_argument("--margin", type=int, default=1, help="extra tokens around the box (JAX demo: 1)")
    edit.add_argument(
        "--blur-radius", type=float, default=None, help="pixel-mask blur radius (default image_size/16 - 1)"
    )
    parser.set_defaults(run=run_sample)


def blend_edit(
    generated: np.ndarray, original: np.ndarray, region: np.ndarray, *, blur_radius: float | None = None
) -> np.ndarray:
    """Blend generated pixels into the original through the upsampled, blurred token mask (JAX demo).

    Args:
        generated: (B, H, W, 3) uint8 decoded edits.
        original: (H, W, 3) uint8 input image.
        region: (h, w) bool token mask of regenerated positions.
        blur_radius: Gaussian blur radius in pixels (default image_size/16 − 1, the demo's value).

    Returns:
        (B, H, W, 3) uint8: generated·m + original·(1 − m).
    """
    from PIL import Image, ImageFilter

    height, width = original.shape[:2]
    radius = max(0.0, max(height, width) / 16 - 1) if blur_radius is None else blur_radius
    mask = Image.fromarray(region.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
    if radius > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(radius))
    weight = np.asarray(mask, dtype=np.float32)[None, :, :, None] / 255.0  # (1, H, W, 1)
    blended = generated.astype(np.float32) * weight + original[None].astype(np.float32) * (1.0 - weight)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _sampling_kwargs(args: argparse.Namespace, stored) -> dict:
    from transformer.config import SamplingConfig

    overrides = {
        "steps": args.steps,
        "schedule": args.schedule,
        "temperature": args.temperature,
        "gumbel_temperature": args.gumbel_temperature,
        "cfg_weight": args.cfg_weight,
        "cfg_schedule": args.cfg_schedule,
    }
    values = {**stored.to_dict(), **{key: value for key, value in overrides.items() if value is not None}}
    return SamplingConfig(**values).as_kwargs()  # validates (steps >= 1, temperature > 0, ...)


def _load_image(path: str, size: int) -> np.ndarray:
    from pipeline.images import ImageRejected, center_crop_resize, decode_image

    image_path = Path(path)
    if not image_path.is_file():
        raise FileNotFoundError(f"no image at {image_path}")
    try:
        image = decode_image(image_path.read_bytes(), min_side=1)
    except ImageRejected as error:
        raise ValueError(f"{image_path} cannot be used: {error}") from None
    return center_crop_resize(image, size)


def run_sample(args: argparse.Namespace) -> int:
    import contextlib

    import torch
    from tqdm.auto import tqdm

    from pipeline.images import encode_png, image_grid, to_model_input, to_uint8_images
    from tokenizer import load_vqgan
    from transformer import inpaint, latent_box, load_sampling_config, load_transformer, sample

    if args.per_class < 1 or args.batch_size < 1:
        raise ValueError("--per-class and --batch-size must be >= 1")
    if (args.image is None) != (args.box is None):
        raise ValueError("inpainting needs both --image and --box")
    device = torch.device(args.device)
    model = load_transformer(args.transformer, map_location=device)
    vqgan = load_vqgan(args.tokenizer, map_location=device)
    config = model.config
    if vqgan.config.codebook_size != config.codebook_size:
        raise ValueError(
            f"tokenizer has {vqgan.config.codebook_size} codes but the transformer expects "
            f"{config.codebook_size}"
        )
    factor = vqgan.config.downsample_factor
    image_size = config.grid_size * factor
    kwargs = _sampling_kwargs(args, load_sampling_config(args.transformer))
    kwargs["start_step"] = args.start_step
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.precision == "bf16"
        else contextlib.nullcontext()
    )

    if args.image is None:
        classes = args.classes if args.classes is not None else list(range(min(config.num_classes, 10)))
        class_ids = torch.tensor(classes).repeat_interleave(args.per_class)
        init, region, original = None, None, None
    else:
        class_id = args.class_id if args.class_id is not None else (args.classes or [0])[0]
        class_ids = torch.full((args.per_class,), class_id)
        original = _load_image(args.image, image_size)  # (H, W, 3) uint8
        box = latent_box(*args.box, downsample=factor, grid_size=config.grid_size, margin=args.margin)
        with torch.no_grad(), autocast:
            tokens = vqgan.encode_to_indices(to_model_input(original[None]).to(device))  # (1, h, w)
        region = torch.zeros(config.grid_size, config.grid_size, dtype=torch.bool)
        region[box.top : box.bottom, box.left : box.right] = True
        init = tokens.expand(args.per_class, -1, -1)
        logger.info("regenerating token rows %d:%d, columns %d:%d", box.top, box.bottom, box.left, box.right)

    images = []
    starts = range(0, len(class_ids), args.batch_size)
    for start in tqdm(starts, desc="batches", unit="batch", disable=len(starts) == 1):
        batch_ids = class_ids[start : start + args.batch_size]
        seeds = [args.seed + start + i for i in range(len(batch_ids))]
        with torch.no_grad(), autocast:
            if init is None:
                tokens = sample(model, batch_ids, seeds=seeds, progress=True, **kwargs).tokens
            else:
                batch_init = init[start : start + len(batch_ids)]
                tokens = inpaint(
                    model, batch_init, region, batch_ids, seeds=seeds, progress=True, **kwargs
                ).tokens
            images.append(to_uint8_images(vqgan.decode_from_indices(tokens)))
    pictures = np.concatenate(images)  # (B, H, W, 3)

    if original is None:
        grid = image_grid(pictures, columns=args.per_class)
    else:
        edited = blend_edit(pictures, original, region.numpy(), blur_radius=args.blur_radius)
        grid = image_grid(np.concatenate([original[None], edited]), columns=min(1 + args.per_class, 9))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_png(grid))
    rows = math.ceil(len(pictures) / args.per_class)
    print(f"wrote {out} ({len(pictures)} images of {image_size}x{image_size}, {rows} row(s))")
    return 0
