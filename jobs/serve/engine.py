"""The sampler behind the service: a plain class that runs a batch of requests as library calls.

`SamplerEngine.__init__` loads a `generation.MaskGIT` once; `run(jobs)` takes the requests of one
Serve batch, groups those with the same sampling knobs (`SampleJob.batch_key`) and makes **one**
sampler call per group (`MaskGIT.sample_tokens`) with every image's own seed, then decodes with
`MaskGIT.decode` and encodes PNGs. Inpainted images are blended into the uploaded image with
`generation.blend_into`, the same blend `maskgit sample` uses. Because the sampler draws each image's
noise from that image's seed, a request's images do not depend on what it was batched with. The
output kind is not part of the key: token requests share the sampler call and just skip the decoder.

That is the "merge" batching mode. In the default "continuous" mode the deployment uses the same
engine's models through a step-level `generation.ContinuousBatcher` (`batcher`, `request`,
`job_output`, `step_event` here; driven by `jobs/serve/continuous.py`): requests of any knobs share
each forward pass and leave as soon as their own steps are done.

No Ray here: the Serve deployment in `jobs/serve/app.py` is a thin adapter that feeds this class, and
tests and the benchmark call it directly.

Dimensions: B images in a group, H×W pixels, h×w token grid, f = H / h.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from generation import MaskGIT, blend_into
from generation.continuous import ContinuousBatcher, SamplingOutcome, SamplingRequest, StepPreview
from pipeline.images import encode_png
from transformer import SamplingConfig

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


class StepEvent(NamedTuple):
    """A running job's state after one of its decoding steps (`stream` yields these before the result)."""

    step: int  # steps done, 1 … total_steps
    total_steps: int
    # int64 (B, h, w): decided tokens plus this step's samples at masked positions; [MASK]
    # (= codebook size) where nothing was sampled (Halton order: cells not reached yet)
    tokens: np.ndarray
    masked: np.ndarray  # bool (B, h, w): positions still masked after the step
    # one PNG per image (previews="images"), else None: `tokens` decoded, each [MASK] position shown as
    # its latest sample (code 0 before the first)
    pngs: list[bytes] | None


PREVIEWS = ("tokens", "images")


def failure_from(error: BaseException) -> JobFailure:
    """A library error as a JobFailure: input checks (ValueError) are the request's fault, anything
    else the server's (details stay in the log)."""
    if isinstance(error, ValueError):
        logger.warning("sampling rejected a job: %s", error)
        return JobFailure(str(error), client_error=True)
    logger.error("sampling failed for a job", exc_info=error)
    return JobFailure("the sampler failed; see the server log", client_error=False)


def count_images(jobs: Sequence[SampleJob]) -> int:
    """Batch size in images (Serve's `batch_size_fn`)."""
    return sum(job.num_images for job in jobs)


class SamplerEngine:
    """A loaded `generation.MaskGIT` that runs batches of `SampleJob`s.

    Args:
        transformer: transformer checkpoint (our folder or a reference `.pth`; local or a URL).
        tokenizer: tokenizer checkpoint (our folder or taming; local or a URL).
        name: public model name (for `info()`).
        device: "auto", "cpu" or "cuda".
        autocast_bf16: run model calls under bfloat16 autocast.
        storage_options: fsspec options for remote model paths.
    """

    def __init__(
        self,
        transformer: str,
        tokenizer: str,
        *,
        name: str = "maskgit",
        device: str = "auto",
        autocast_bf16: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.pipe = MaskGIT.load(
            transformer, tokenizer, device=device, bf16=autocast_bf16, storage_options=storage_options
        )
        self.image_size = self.pipe.image_size

    def info(self) -> dict[str, Any]:
        """What is loaded: public name, sizes, configs, class names and sampling defaults (no paths)."""
        return {"name": self.name, **self.pipe.info()}

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
            return [failure_from(error)]

    def _run_group(self, group: list[SampleJob]) -> list[JobOutput]:
        """One sampler call for jobs that share kind and knobs."""
        pipe = self.pipe
        class_ids = [c for job in group for c in job.class_ids]
        seeds = [s for job in group for s in job.seeds]
        sampling = group[0].sampling
        if group[0].kind == "inpaint":
            counts = torch.tensor([job.num_images for job in group])
            known = torch.cat([pipe.encode(job.image[None]).cpu() for job in group])  # (J, h, w), a call each
            region = torch.from_numpy(np.stack([job.region for job in group]))  # (J, h, w)
            known, region = known.repeat_interleave(counts, dim=0), region.repeat_interleave(counts, dim=0)
            result = pipe.inpaint_tokens(known, region, class_ids, seeds=seeds, sampling=sampling)
        else:
            result = pipe.sample_tokens(class_ids, seeds=seeds, sampling=sampling)
        tokens = result.tokens.cpu()
        # Each job's images get a decoder call of their own: the decoder's last bits depend on its batch
        # (see generation/continuous.py), and a job's pixels must not depend on the others.
        outputs, start = [], 0
        for job in group:
            stop = start + job.num_images
            if job.output == "png":
                pictures = pipe.decode(tokens[start:stop])  # (B_job, H, W, 3)
                if job.kind == "inpaint":  # the same blend as `maskgit sample`
                    pictures = blend_into(pictures, job.image, job.region)
                pngs = [encode_png(picture) for picture in pictures]
                outputs.append(JobOutput(pngs=pngs, tokens=None, batch_images=len(seeds)))
            else:
                grids = tokens[start:stop].numpy()  # (B_job, h, w)
                outputs.append(JobOutput(pngs=None, tokens=grids, batch_images=len(seeds)))
            start = stop
        return outputs

    # --- continuous batching (generation.ContinuousBatcher; driven by jobs/serve/continuous.py) -----

    def batcher(self, max_rows: int) -> ContinuousBatcher:
        """A step-level batcher over this engine's models, at most `max_rows` rows per forward pass."""
        return ContinuousBatcher(self.pipe, max_rows=max_rows)

    @staticmethod
    def request(job: SampleJob, *, previews: str | None = None) -> SamplingRequest:
        """The batcher's request for `job` (`previews="images"` also decodes each step's predictions)."""
        if previews is not None and previews not in PREVIEWS:
            raise ValueError(f"previews must be one of {PREVIEWS} or None, got {previews!r}")
        return SamplingRequest(
            job.class_ids, job.seeds, job.sampling, image=job.image, region=job.region,
            decode=job.output == "png", preview_images=previews == "images",
        )  # fmt: skip

    @staticmethod
    def step_event(preview: StepPreview) -> StepEvent:
        """A batcher preview as the event `stream` yields."""
        pngs = None if preview.images is None else [encode_png(picture) for picture in preview.images]
        return StepEvent(
            preview.step, preview.total_steps, preview.predictions.numpy(), preview.masked.numpy(), pngs
        )

    @staticmethod
    def job_output(job: SampleJob, outcome: SamplingOutcome) -> JobOutput:
        """A finished batcher request as the job's output (PNGs encoded here)."""
        if job.output == "png":
            pngs = [encode_png(picture) for picture in outcome.images]
            return JobOutput(pngs=pngs, tokens=None, batch_images=outcome.shared_rows)
        return JobOutput(pngs=None, tokens=outcome.tokens.numpy(), batch_images=outcome.shared_rows)
