"""`MaskGIT`: the one object that turns a transformer + tokenizer into images.

In the spirit of a diffusers pipeline (or google maskgit's `inference.py`): load both models once,
check that they fit together once, then `generate` class-conditional images, `inpaint` a box or a
mask of an image, or `outpaint` beyond its border. Every consumer — `maskgit sample`, the Serve
app, the evaluate job, training sample grids, the ablation, the quickstart — calls this object, and
`decode` below is the only place where token grids become pixels.

    pipe = MaskGIT.load("s3://bucket/run/export", "s3://bucket/models/vqgan", bf16=True)
    out = pipe.generate([207, 207, 1], seeds=[0, 1, 2], sampling={"steps": 12})
    out.images  # (3, 256, 256, 3) uint8

Randomness is per image: image i draws all its noise from `seeds[i]` (docs/reference.md#sampler),
so results do not depend on `batch_size` or on what else shares a batch.

Dimensions: B images, H×W pixels (H = W = `image_size`), f = `downsample_factor`, h×w token grid.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from generation.regions import PixelBox, blend_into, box_to_token_region, mask_to_token_region
from generation.settings import SamplingOverrides, resolve_sampling
from tokenizer.pixels import center_crop_resize, to_model_input, to_uint8_images
from transformer import (
    MAX_SEED,
    EditResult,
    SampleResult,
    SampleTrace,
    SamplingConfig,
    inpaint,
    outpaint,
    sample,
)
from weights import unwrap_model

logger = logging.getLogger(__name__)



class Generation(NamedTuple):
    """Generated images and how they were made."""

    images: np.ndarray  # (B, H, W, 3) uint8
    tokens: torch.Tensor  # LongTensor[B, h, w] on the CPU
    class_ids: tuple[int, ...]
    seeds: tuple[int, ...]
    sampling: SamplingConfig  # the resolved settings
    trace: SampleTrace | None  # per-step predictions and masks (T', B, h, w) when asked for


class Edit(NamedTuple):
    """Edited images (inpainting or outpainting) and where they were regenerated."""

    images: np.ndarray  # (B, H, W', 3) uint8, blended into `original`
    tokens: torch.Tensor  # LongTensor[B, h, w'] on the CPU
    region: np.ndarray  # (h, w') bool: True at regenerated tokens
    original: np.ndarray  # (H, W', 3) uint8: the input at model resolution (outpaint: on the new canvas)
    class_ids: tuple[int, ...]
    seeds: tuple[int, ...]
    sampling: SamplingConfig
    trace: SampleTrace | None


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" → CUDA when available, else the CPU; asking for CUDA without one is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no GPU is visible")
    return device


def check_compatible(transformer_config: Any, tokenizer_config: Any) -> int:
    """Check that a transformer and a tokenizer fit together; returns the image side in pixels.

    The codebook sizes must be equal; the image side is the token grid times the tokenizer's
    downsampling factor (a convolutional tokenizer decodes any grid, so its training resolution may
    differ: the reference's 512 px model uses the VQGAN trained at 256 px).

    Raises:
        ValueError: the codebook sizes differ (the message names both values).
    """
    if transformer_config.codebook_size != tokenizer_config.codebook_size:
        raise ValueError(
            f"the transformer expects {transformer_config.codebook_size} codes but the tokenizer has "
            f"{tokenizer_config.codebook_size}: they were not trained together"
        )
    return int(transformer_config.grid_size) * int(tokenizer_config.downsample_factor)


def draw_seeds(count: int, seeds: Sequence[int] | int | None) -> tuple[int, ...]:
    """One seed per image: `seeds` itself, `seeds + i` for an int, or random ones for None (each in
    [0, MAX_SEED), so a returned seed can be sent back through the CLI or the HTTP API)."""
    if seeds is None:
        base = secrets.randbelow(MAX_SEED - count + 1)  # every base + i stays below MAX_SEED
        return tuple(base + i for i in range(count))
    if isinstance(seeds, int):
        return tuple(seeds + i for i in range(count))
    seeds = tuple(int(seed) for seed in seeds)
    if len(seeds) != count:
        raise ValueError(f"seeds must have one entry per image ({count}), got {len(seeds)}")
    return seeds


class MaskGIT:
    """A transformer and a tokenizer that were trained together, ready to sample.

    Args:
        transformer: a MaskTransformer (or a wrapper such as a DeepSpeed engine, which is called as is
            so ZeRO-3 can gather its parameters).
        tokenizer: a tokenizer with `encode_to_indices` / `decode_from_indices` (the VQGAN).
        sampling_defaults: the settings stored with the transformer (None: the reference defaults).
        class_names: names of the classes, stored with the transformer (None when unknown).
        bf16: run the models under bfloat16 autocast.

    Raises:
        ValueError: the two models do not fit together (codebook size); the message names both values.
    """

    def __init__(
        self,
        transformer: nn.Module,
        tokenizer: nn.Module,
        *,
        sampling_defaults: SamplingConfig | None = None,
        class_names: Sequence[str] | None = None,
        bf16: bool = False,
    ) -> None:
        self.transformer, self.tokenizer = transformer, tokenizer
        self.config = unwrap_model(transformer).config
        self.tokenizer_config = tokenizer.config
        self.image_size = check_compatible(self.config, self.tokenizer_config)
        self.downsample_factor = int(self.tokenizer_config.downsample_factor)
        self.grid_size = int(self.config.grid_size)
        if class_names is not None and len(class_names) != self.config.num_classes:
            raise ValueError(
                f"{len(class_names)} class names for a transformer with {self.config.num_classes} classes"
            )
        self.class_names = tuple(class_names) if class_names is not None else None
        self.sampling_defaults = sampling_defaults or SamplingConfig()
        self.bf16 = bf16
        self.device = next(unwrap_model(transformer).parameters()).device

    @classmethod
    def load(
        cls,
        transformer: str,
        tokenizer: str,
        *,
        device: str | torch.device = "auto",
        bf16: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> MaskGIT:
        """Load both models from local folders or fsspec URLs (s3://…), in eval mode on `device`.

        Args:
            transformer: our transformer folder or a reference `.pth`.
            tokenizer: our tokenizer folder or a foreign tokenizer checkpoint.
            device: "auto", "cpu", "cuda", "cuda:1", ...
            bf16: bfloat16 autocast for every model call.
            storage_options: fsspec options for remote paths (credentials are never logged).
        """
        from tokenizer import load_tokenizer
        from transformer import load_class_names, load_sampling_config, load_transformer

        device = resolve_device(device)
        # weights/ opens every path through storage/, which adds our object-store retries itself.
        model = load_transformer(transformer, map_location=device, storage_options=storage_options)
        vqgan = load_tokenizer(tokenizer, map_location=device, storage_options=storage_options)
        pipe = cls(
            model,
            vqgan,
            sampling_defaults=load_sampling_config(transformer, storage_options=storage_options),
            class_names=load_class_names(transformer, storage_options=storage_options),
            bf16=bf16,
        )
        logger.info(
            "loaded MaskGIT on %s: %d classes, %d×%d px from a %d×%d token grid",
            device, pipe.num_classes, pipe.image_size, pipe.image_size, pipe.grid_size, pipe.grid_size,
        )  # fmt: skip
        return pipe

    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    def info(self) -> dict[str, Any]:
        """What is loaded: sizes, both configs, class names and sampling defaults (no paths)."""
        return {
            "image_size": self.image_size,
            "grid_size": self.grid_size,
            "downsample_factor": self.downsample_factor,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names else None,
            "codebook_size": self.config.codebook_size,
            "transformer": self.config.to_dict(),
            "tokenizer": self.tokenizer_config.to_dict(),
            "sampling_defaults": self.sampling_defaults.to_dict(),
            "device": str(self.device),
            "autocast_bf16": self.bf16,
        }

    def resolve_sampling(self, sampling: SamplingOverrides = None) -> SamplingConfig:
        """The settings a call runs with: reference defaults ← stored with the model ← `sampling`."""
        return resolve_sampling(self.sampling_defaults, sampling)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # --- the three model calls: tokens from noise, pixels → tokens, tokens → pixels -------------------

    @torch.no_grad()
    def sample_tokens(
        self,
        class_ids: Sequence[int] | torch.Tensor,
        *,
        seeds: Sequence[int],
        sampling: SamplingConfig,
        init_tokens: torch.Tensor | None = None,
        start_step: int = 0,
        trace: bool = False,
        progress: bool = False,
    ) -> SampleResult:
        """One call of the sampler (`transformer.sample`) under this pipeline's device and autocast.

        Args:
            class_ids: (B,) classes.
            seeds: one per image.
            sampling: resolved settings (see `resolve_sampling`).
            init_tokens: LongTensor[B, h, w] with [MASK] (`config.mask_token_id`) where to decode.
            start_step: first step of the schedule (class-guided editing).
            trace: also return the per-step trace.
            progress: a progress bar over steps.
        """
        if init_tokens is not None:
            init_tokens = init_tokens.to(self.device)
        with self._autocast():
            return sample(
                self.transformer, torch.as_tensor(class_ids), seeds=list(seeds), init_tokens=init_tokens,
                start_step=start_step, return_trace=trace, progress=progress, **sampling.as_kwargs(),
            )  # fmt: skip

    @torch.no_grad()
    def inpaint_tokens(
        self,
        tokens: torch.Tensor,
        region: torch.Tensor,
        class_ids: Sequence[int] | torch.Tensor,
        *,
        seeds: Sequence[int],
        sampling: SamplingConfig,
        start_step: int = 0,
        trace: bool = False,
        progress: bool = False,
    ) -> EditResult:
        """One call of the token-level editor (`transformer.inpaint`) under this pipeline's device and
        autocast: `region` of `tokens` is regenerated, every other token kept.

        Args:
            tokens: LongTensor[B, h, w] codes (e.g. `encode` of the images).
            region: BoolTensor[B, h, w] or [h, w] (one region for all), True = regenerate.
            class_ids, seeds, sampling, start_step, trace, progress: as in `sample_tokens`;
                `steps=12, start_step=2` with a `latent_box` region is the JAX demo's class-guided edit.
        """
        with self._autocast():
            return inpaint(
                self.transformer, tokens.to(self.device), region, torch.as_tensor(class_ids),
                seeds=list(seeds), start_step=start_step, return_trace=trace, progress=progress,
                **sampling.as_kwargs(),
            )  # fmt: skip

    @torch.no_grad()
    def encode(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 images -> LongTensor[B, h, w] codes (on the pipeline's device)."""
        with self._autocast():
            return self.tokenizer.encode_to_indices(to_model_input(images).to(self.device))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """LongTensor[B, h, w] codes -> (B, H, W, 3) uint8 images. The one tokens-to-pixels step."""
        with self._autocast():
            return to_uint8_images(self.tokenizer.decode_from_indices(tokens.to(self.device)))

    # --- what users call -------------------------------------------------------------------------------

    def generate(
        self,
        class_ids: Sequence[int] | torch.Tensor,
        *,
        seeds: Sequence[int] | int | None = None,
        sampling: SamplingOverrides = None,
        batch_size: int | None = None,
        start_step: int = 0,
        trace: bool = False,
        progress: bool = False,
    ) -> Generation:
        """Class-conditional images, one per entry of `class_ids`.

        Args:
            class_ids: (B,) classes in [0, num_classes).
            seeds: one per image, a base seed (image i uses seed + i), or None for random ones.
            sampling: overrides of the stored settings (a mapping, None values ignored) or a full config.
            batch_size: images decoded together (None: all); results do not depend on it.
            start_step: first step of the schedule (JAX `start_iter`).
            trace: also return the per-step predictions and masks.
            progress: progress bars over batches and steps.

        Returns:
            Generation(images, tokens, class_ids, seeds, sampling, trace).
        """
        # np.asarray, not torch.as_tensor: a read-only array (Ray's object store) needs no copy to be read
        ids = class_ids if torch.is_tensor(class_ids) else np.asarray(class_ids)
        class_ids = tuple(int(c) for c in ids.reshape(-1).tolist())
        if not class_ids:
            raise ValueError("class_ids is empty: nothing to generate")
        seeds = draw_seeds(len(class_ids), seeds)
        settings = self.resolve_sampling(sampling)
        tokens, traces = self._batched(
            class_ids, seeds, settings, batch_size, start_step=start_step, trace=trace, progress=progress
        )
        images = np.concatenate([self.decode(part) for part in tokens.split(batch_size or len(tokens))])
        return Generation(images, tokens, class_ids, seeds, settings, traces)

    def inpaint(
        self,
        image: np.ndarray,
        *,
        class_id: int,
        box: PixelBox | Sequence[int] | None = None,
        mask: np.ndarray | None = None,
        count: int = 1,
        margin: int = 1,
        seeds: Sequence[int] | int | None = None,
        sampling: SamplingOverrides = None,
        start_step: int = 0,
        blur_radius: float | None = None,
        batch_size: int | None = None,
        trace: bool = False,
        progress: bool = False,
    ) -> Edit:
        """Regenerate a box or a masked region of `image` for `class_id`, `count` times.

        Args:
            image: (H, W, 3) uint8; center-cropped and resized to `image_size` when it is not that size.
            class_id: the class the new content is conditioned on.
            box: (top, left, height, width) in pixels of the model-resolution image; or
            mask: (image_size, image_size) bool, True where to regenerate. Exactly one of box / mask.
            count: edited variants.
            margin: extra tokens around the box (JAX demo: 1).
            seeds, sampling, batch_size, trace, progress: as in `generate`.
            start_step: first step of the schedule (`steps=12, start_step=2` is the JAX demo's edit).
            blur_radius: of the blend's mask (default image_size/16 − 1).

        Returns:
            Edit with the blended images; tokens outside the region are the input's, unchanged.
        """
        if (box is None) == (mask is None):
            raise ValueError("give exactly one of box (pixels) or mask")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        original = self.prepare_image(image)
        if box is not None:
            region = box_to_token_region(tuple(box), self.image_size, self.downsample_factor, margin=margin)
        else:
            region = mask_to_token_region(np.asarray(mask, dtype=bool), self.downsample_factor)
        known = self.encode(original[None]).cpu()  # (1, h, w)
        class_ids, seeds = (int(class_id),) * count, draw_seeds(count, seeds)
        settings = self.resolve_sampling(sampling)
        tokens, traces = self._batched(
            class_ids, seeds, settings, batch_size, known=known.expand(count, -1, -1),
            region=torch.from_numpy(region), start_step=start_step, trace=trace, progress=progress,
        )  # fmt: skip
        decoded = np.concatenate([self.decode(part) for part in tokens.split(batch_size or count)])
        images = blend_into(decoded, original, region, blur_radius=blur_radius)
        return Edit(images, tokens, region, original, class_ids, seeds, settings, traces)

    def outpaint(
        self,
        image: np.ndarray,
        *,
        class_id: int,
        extend: int,
        direction: Literal["right", "left", "down", "up"] = "right",
        count: int = 1,
        seeds: Sequence[int] | int | None = None,
        sampling: SamplingOverrides = None,
        blur_radius: float | None = None,
    ) -> Edit:
        """Extend `image` by `extend` pixels (rounded up to whole tokens) on one side.

        The canvas grows one model-sized window at a time (`transformer.outpaint`, half a window per
        step); the decoded canvas is blended with the input over the known part.

        Returns:
            Edit whose images are (count, H, W + e, 3) for right/left, (count, H + e, W, 3) for down/up.
        """
        if count < 1 or extend < 1:
            raise ValueError(f"count and extend must be >= 1, got count={count}, extend={extend}")
        original = self.prepare_image(image)
        new_tokens = -(-extend // self.downsample_factor)
        class_ids, seeds = (int(class_id),) * count, draw_seeds(count, seeds)
        settings = self.resolve_sampling(sampling)
        known = self.encode(original[None]).expand(count, -1, -1)  # (B, h, w)
        with torch.no_grad(), self._autocast():
            result = outpaint(
                self.transformer, known, torch.tensor(class_ids), extend=new_tokens, direction=direction,
                seeds=list(seeds), **settings.as_kwargs(),
            )  # fmt: skip
        tokens, region = result.tokens.cpu(), result.region[0].cpu().numpy()
        decoded = self.decode(tokens)  # (B, H', W', 3)
        placed = _place_original(original, decoded.shape[1:], direction)  # (H', W', 3)
        known = np.kron(~region, np.ones((self.downsample_factor,) * 2, dtype=bool))  # (H', W')
        # Under the blurred seam the input is mixed with generated pixels, never with an empty border.
        bases = np.where(known[None, :, :, None], placed[None], decoded)  # (B, H', W', 3)
        images = blend_into(decoded, bases, region, blur_radius=blur_radius)
        return Edit(images, tokens, region, placed, class_ids, seeds, settings, None)

    def prepare_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 at the model's resolution (center crop + resize, the evaluation transform)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        return center_crop_resize(image, self.image_size)

    def _batched(
        self,
        class_ids: tuple[int, ...],
        seeds: tuple[int, ...],
        settings: SamplingConfig,
        batch_size: int | None,
        *,
        known: torch.Tensor | None = None,
        region: torch.Tensor | None = None,
        start_step: int = 0,
        trace: bool = False,
        progress: bool = False,
    ) -> tuple[torch.Tensor, SampleTrace | None]:
        """Token grids for every image, `batch_size` at a time; traces joined along the batch.

        With `known` (LongTensor[B, h, w]) and `region` ((h, w) bool) the batches are inpainted
        (`inpaint_tokens`), otherwise sampled from a fully masked grid (`sample_tokens`).
        """
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        size = batch_size or len(class_ids)
        starts = range(0, len(class_ids), size)
        if progress and len(starts) > 1:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="batches", unit="batch")
        tokens, traces = [], []
        for start in starts:
            part = slice(start, start + size)
            common = {
                "seeds": seeds[part], "sampling": settings, "start_step": start_step, "trace": trace,
                "progress": progress,
            }  # fmt: skip
            if region is None:
                result = self.sample_tokens(class_ids[part], **common)
            else:
                result = self.inpaint_tokens(known[part], region, class_ids[part], **common)
            tokens.append(result.tokens.cpu())
            traces.append(result.trace)
        joined = None
        if trace:
            joined = SampleTrace(*(torch.cat([t[i].cpu() for t in traces], dim=1) for i in range(3)))
        return torch.cat(tokens), joined


def _place_original(original: np.ndarray, shape: tuple[int, ...], direction: str) -> np.ndarray:
    """`original` at its place on an empty canvas of `shape` (the side away from `direction`)."""
    canvas = np.zeros(shape, dtype=np.uint8)
    height, width = original.shape[:2]
    top = shape[0] - height if direction == "up" else 0
    left = shape[1] - width if direction == "left" else 0
    canvas[top : top + height, left : left + width] = original
    return canvas
