"""`maskgit sample`: class-conditional samples or an inpainting edit, written as one PNG grid.

A thin adapter around `generation.MaskGIT`: load both models (local folders or fsspec URLs), call
`generate` or `inpaint`, tile the images. Sampling knobs not given come from the settings stored with
the transformer. Sample i uses seed `--seed + i`, so the images do not depend on `--batch-size`.

Inpainting (`--image` + `--box`): the pixel box becomes a token box widened by `--margin` tokens,
those tokens are regenerated for `--class-id`, and the result is blended into the original
(docs/reference.md#editing). `--sample-steps 12 --start-step 2` is the JAX demo's class-guided edit.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, NamedTuple

import numpy as np

from jobs.options import (
    add_sampling_arguments,
    add_storage_options_argument,
    options_from_args,
    sampling_overrides,
    seed_argument,
)


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """Settings of one `maskgit sample` run.

    Attributes:
        transformer, tokenizer: model folders (ours) or foreign checkpoints; local paths or URLs.
        out: PNG file to write (local path or URL).
        classes: class ids (None: the first min(C, 10)); inpainting uses the first when no class_id.
        per_class: samples per class, or edited variants.
        seed: sample i uses seed + i.
        batch_size: images decoded together (does not change the images).
        precision: "fp32" or "bf16" (autocast).
        device: "cpu", "cuda", "auto", ...
        sampling: overrides of the stored sampling settings (None values ignored).
        start_step: first step of the schedule (class-guided editing).
        image, box: inpaint `box` (top, left, height, width in model-resolution pixels) of `image`.
        class_id: class the edit is conditioned on.
        margin: extra tokens around the box.
        blur_radius: of the blend mask (None: image_size/16 − 1).
        storage_options: fsspec options for remote paths.
    """

    transformer: str
    tokenizer: str
    out: str
    classes: tuple[int, ...] | None = None
    per_class: int = 4
    seed: int = 0
    batch_size: int = 16
    precision: str = "fp32"
    device: str = "cpu"
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)
    start_step: int = 0
    image: str | None = None
    box: tuple[int, int, int, int] | None = None
    class_id: int | None = None
    margin: int = 1
    blur_radius: float | None = None
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.per_class < 1 or self.batch_size < 1:
            raise ValueError("--per-class and --batch-size must be >= 1")
        if (self.image is None) != (self.box is None):
            raise ValueError("inpainting needs both --image and --box")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"--precision must be fp32 or bf16, got {self.precision!r}")


class SampleOutput(NamedTuple):
    """What `run_sample` wrote."""

    path: str
    images: np.ndarray  # (B, H, W, 3) uint8: the samples, or the edited variants
    grid: np.ndarray  # the PNG's pixels
    rows: int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sample` subcommand."""
    parser = subparsers.add_parser(
        "sample",
        help="sample class-conditional images (or inpaint a box of an image) and write a PNG grid",
        description="Decode token grids with MaskGIT's iterative sampler and the tokenizer's decoder. "
        "Without --image, writes one row per class; with --image and --box, regenerates the box and writes "
        "the original followed by the edited variants.",
    )
    parser.add_argument("--transformer", required=True, help="transformer folder (ours) or a valeoai .pth")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (ours) or a taming checkpoint")
    parser.add_argument("--out", required=True, help="PNG file to write (local or s3://...)")
    parser.add_argument(
        "--classes", type=int, nargs="+", default=None, help="class ids (default: 0..min(C,10)-1)"
    )
    parser.add_argument("--per-class", type=int, default=4, help="samples per class (or edited variants)")
    parser.add_argument("--seed", type=seed_argument, default=0, help="sample i uses seed + i, < 2**53")
    parser.add_argument("--batch-size", type=int, default=16, help="samples decoded together")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="autocast dtype")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, auto")
    add_storage_options_argument(parser)
    add_sampling_arguments(parser, aliases={"steps": "--steps"})
    parser.add_argument("--start-step", type=int, default=0, help="start later in the schedule (editing)")
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
    parser.set_defaults(run=_run_from_args)


def _run_from_args(args: argparse.Namespace) -> int:
    options = options_from_args(
        SampleOptions, args, sampling=sampling_overrides(args),
        classes=tuple(args.classes) if args.classes is not None else None,
        box=tuple(args.box) if args.box is not None else None,
    )  # fmt: skip
    output = run_sample(options)
    size = output.images.shape[1]
    print(f"wrote {output.path} ({len(output.images)} images of {size}x{size}, {output.rows} row(s))")
    return 0


def _read_image(url: str, storage_options: dict[str, Any] | None) -> np.ndarray:
    from pipeline.images import ImageRejected, decode_image
    from storage.filesystem import url_to_fs

    fs, path = url_to_fs(url, storage_options)
    if not fs.isfile(path):
        raise FileNotFoundError(f"no image at {url}")
    try:
        return decode_image(fs.cat_file(path), min_side=1)
    except ImageRejected as error:
        raise ValueError(f"{url} cannot be used: {error}") from None


def run_sample(options: SampleOptions) -> SampleOutput:
    """Sample (or edit), tile and write the PNG grid.

    Raises:
        ValueError / FileNotFoundError: bad input, with a message naming it.
    """
    from generation import MaskGIT
    from pipeline.images import encode_png, image_grid
    from storage.filesystem import url_to_fs

    pipe = MaskGIT.load(
        options.transformer, options.tokenizer, device=options.device, bf16=options.precision == "bf16",
        storage_options=options.storage_options,
    )  # fmt: skip
    if options.image is None:
        classes = options.classes if options.classes is not None else range(min(pipe.num_classes, 10))
        class_ids = np.repeat(np.asarray(list(classes), dtype=np.int64), options.per_class)
        result = pipe.generate(
            class_ids, seeds=options.seed, sampling=options.sampling, batch_size=options.batch_size,
            start_step=options.start_step, progress=True,
        )  # fmt: skip
        images, grid = result.images, image_grid(result.images, columns=options.per_class)
    else:
        class_id = options.class_id if options.class_id is not None else (options.classes or (0,))[0]
        edit = pipe.inpaint(
            _read_image(options.image, options.storage_options), class_id=class_id, box=options.box,
            count=options.per_class, margin=options.margin, seeds=options.seed, sampling=options.sampling,
            start_step=options.start_step, blur_radius=options.blur_radius, batch_size=options.batch_size,
            progress=True,
        )  # fmt: skip
        images = edit.images
        grid = image_grid(np.concatenate([edit.original[None], images]), columns=min(1 + len(images), 9))
    fs, path = url_to_fs(options.out, options.storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, encode_png(grid))
    return SampleOutput(options.out, images, grid, rows=math.ceil(len(images) / options.per_class))
