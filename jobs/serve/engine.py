"""The sampler behind the service: a plain class that runs a batch of requests as library calls.

`SamplerEngine.__init__` loads the transformer and the VQGAN once; `run(jobs)` takes the requests of
one Serve batch, groups those with the same sampling knobs (`SampleJob.batch_key`) and makes **one**
`transformer.sample` (generate) or `transformer.inpaint` (inpaint) call per group with every image's
own seed, then decodes with the VQGAN and encodes PNGs. Inpainted images are blended into the
uploaded image with `jobs.sample.blend_edit` (upsampled token mask, Gaussian blur), exactly as
`maskgit sample` does. Because `sample()` draws each image's noise
from that image's seed, a request's images do not depend on what it was batched with. The output
kind is not part of the key: token requests share the sampler call and just skip the decoder.

No Ray here (STYLE.md §8/§10): the Serve deployment in `jobs/serve/app.py` is a thin adapter that feeds
this class, and tests and the benchmark call it directly.

Dimensions: B images in a group, H×W pixels, h×w token grid, f = H / h.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from jobs.sample import blend_edit
from pipeline.images import encode_png, to_model_input, to_uint8_images
from tokenizer import load_vqgan
from transformer import SamplingConfig, inpaint, load_sampling_config, load_transformer, sample

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SampleJob:
    """One request's work: images to generate, or an image to inpaint `len(seeds)` times.

    Attributes:
        kind: "generate" or "inpaint".
        class_ids: class of each image.
        seeds: seed of each image (request seed s gives s, s + 1, …).
        sampling: the decoding knobs.
        output: "png" or "tokens".
        image: for inpaint, the (H, W, 3) uint8 image at the model's resolution.
        region: for inpaint, the (h, w) bool token region to regenerate.
    """

    kind: Literal["generate", "inpaint"]
    class_ids: tuple[int, ...]
    seeds: tuple[int, ...]
    sampling: SamplingConfig
    output: Literal["png", "tokens"] = "png"
    image: np.ndarray | None = field(default=None, repr=False)
    region: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.class_ids) != len(self.seeds) or not self.seeds:
            raise ValueError(
                f"a job needs one seed per image, got {len(self.class_ids)} classes and "
                f"{len(self.seeds)} seeds"
            )
        if (self.kind == "inpaint") != (self.image is not None and self.region is not None):
            raise ValueError("inpaint jobs (and only they) carry an image and a token region")

    @property
    def num_images(self) -> int:
        return len(self.seeds)

    @property
    def batch_key(self) -> tuple[str, SamplingConfig]:
        """Jobs with equal keys run in one sampler call."""
        return self.kind, self.sampling


class JobOutput(NamedTuple):
    """What one job produced, in its image order."""

    pngs: list[bytes] | None  # one PNG per image (output="png")
    tokens: np.ndarray | None  # int64 (B, h, w) (output="tokens")
    batch_images: int  # images in the sampler call that produced them


class JobFailure(NamedTuple):
    """A job that could not run; `message` is safe to show to the client."""

    message: str
    client_error: bool  # True: the request was at fault (4xx); False: the server (5xx)


def count_images(jobs: Sequence[SampleJob]) -> int:
    """Batch size in images (Serve's `batch_size_fn`)."""
    return sum(job.num_images for job in jobs)


def pixel_mask_to_token_region(mask: np.ndarray, downsample: int) -> np.ndarray:
    """(H, W) bool pixel mask -> (h, w) bool token region: a token is regenerated when any pixel of
    its f×f cell is masked, so the region always covers the mask."""
    height, width = mask.shape
    cells = mask.reshape(height // downsample, downsample, width // downsample, downsample)
    return cells.any(axis=(1, 3))


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but this replica sees no GPU (set num_gpus)")
    return torch.device(device)


class SamplerEngine:
    """A loaded transformer + VQGAN that runs batches of `SampleJob`s.

    Args:
        transformer: transformer checkpoint (our folder or a reference `.pth`).
        tokenizer: VQGAN checkpoint (our folder or taming).
        name: public model name (for `info()`).
        device: "auto", "cpu" or "cuda".
        autocast_bf16: run model calls under bfloat16 autocast.
    """

    def __init__(
        self,
        transformer: str,
        tokenizer: str,
        *,
        name: str = "maskgit",
        device: str = "auto",
        autocast_bf16: bool = False,
    ) -> None:
        self.device = _resolve_device(device)
        self.autocast_bf16 = autocast_bf16
        self.name = name
        self.transformer = load_transformer(transformer, map_location=self.device)
        self.vqgan = load_vqgan(tokenizer, map_location=self.device)
        self.sampling_defaults = load_sampling_config(transformer)
        config, vq_config = self.transformer.config, self.vqgan.config
        if config.codebook_size != vq_config.codebook_size:
            raise ValueError(
                f"the transformer expects {config.codebook_size} codes but the tokenizer has "
                f"{vq_config.codebook_size}: they were not trained together"
            )
        self.downsample = vq_config.downsample_factor
        self.image_size = config.grid_size * self.downsample
        logger.info(
            "loaded %s on %s: %d classes, %dx%d px via a %dx%d token grid",
            name,
            self.device,
            config.num_classes,
            self.image_size,
            self.image_size,
            config.grid_size,
            config.grid_size,
        )

    def info(self) -> dict[str, Any]:
        """What is loaded: public name, sizes, configs and sampling defaults (no paths)."""
        config = self.transformer.config
        return {
            "name": self.name,
            "image_size": self.image_size,
            "grid_size": config.grid_size,
            "downsample_factor": self.downsample,
            "num_classes": config.num_classes,
            "codebook_size": config.codebook_size,
            "transformer": config.to_dict(),
            "tokenizer": self.vqgan.config.to_dict(),
            "sampling_defaults": self.sampling_defaults.to_dict(),
            "device": str(self.device),
            "autocast_bf16": self.autocast_bf16,
        }

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.autocast_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def run(self, jobs: Sequence[SampleJob]) -> list[JobOutput | JobFailure]:
        """Run a batch of jobs, one sampler call per group of equal `batch_key`.

        Returns:
            one JobOutput (or JobFailure) per job, in order.
        """
        groups: dict[tuple, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.batch_key, []).append(index)
        results: list[JobOutput | JobFailure | None] = [None] * len(jobs)
        for indices in groups.values():
            outputs = self._run_isolated([jobs[i] for i in indices])
            for index, output in zip(indices, outputs):
                results[index] = output
        return results  # type: ignore[return-value]

    def _run_isolated(self, group: list[SampleJob]) -> list[JobOutput | JobFailure]:
        """`_run_group`, and when a merged call fails, each job alone, so one bad request fails alone."""
        try:
            return self._run_group(group)
        except Exception as error:
            if len(group) > 1:
                return [output for job in group for output in self._run_isolated([job])]
            if isinstance(error, ValueError):  # a library input check: the request's fault
                logger.warning("sampling rejected a job: %s", error)
                return [JobFailure(str(error), client_error=True)]
            logger.exception("sampling failed for a job")  # a bug or a device failure: details stay here
            return [JobFailure("the sampler failed; see the server log", client_error=False)]

    @torch.no_grad()
    def _run_group(self, group: list[SampleJob]) -> list[JobOutput]:
        """One sampler call for jobs that share kind and knobs."""
        class_ids = [c for job in group for c in job.class_ids]
        seeds = [s for job in group for s in job.seeds]
        knobs = group[0].sampling.as_kwargs()
        with self._autocast():
            if group[0].kind == "generate":
                tokens = sample(self.transformer, class_ids, seeds=seeds, **knobs).tokens  # (B, h, w)
            else:
                pixels = to_model_input(np.stack([job.image for job in group])).to(
                    self.device
                )  # (J, 3, H, W)
                counts = torch.tensor([job.num_images for job in group], device=self.device)
                known = self.vqgan.encode_to_indices(pixels).repeat_interleave(counts, dim=0)  # (B, h, w)
                region = torch.from_numpy(np.stack([job.region for job in group for _ in job.seeds])).to(
                    self.device
                )  # (B, h, w)
                tokens = inpaint(self.transformer, known, region, class_ids, seeds=seeds, **knobs).tokens
            want_png = [job.output == "png" for job in group for _ in job.seeds]
            decoded = None
            if any(want_png):
                rows = torch.tensor(want_png, device=tokens.device)
                decoded = to_uint8_images(self.vqgan.decode_from_indices(tokens[rows]))  # (B', H, W, 3)
        tokens = tokens.cpu().numpy()
        outputs, start, png_start = [], 0, 0
        for job in group:
            stop = start + job.num_images
            if job.output == "png":
                pictures = decoded[png_start : png_start + job.num_images]
                png_start += job.num_images
                if job.kind == "inpaint":  # the same blend as `maskgit sample`
                    pictures = blend_edit(pictures, job.image, job.region)
                pngs = [encode_png(picture) for picture in pictures]
                outputs.append(JobOutput(pngs=pngs, tokens=None, batch_images=len(seeds)))
            else:
                outputs.append(JobOutput(pngs=None, tokens=tokens[start:stop], batch_images=len(seeds)))
            start = stop
        return outputs
