"""`ContinuousBatcher`: step-level continuous batching of sampling requests over one `MaskGIT`.

MaskGIT decodes in a small fixed number of steps, each one forward pass. Instead of merging only
requests with identical knobs and making each wait for its whole batch, the batcher keeps one set of
running rows (one row per image) and advances all of them with **one** forward per step
(`transformer.decode.decode_step`): rows of different requests, at different steps, with different
step counts, schedules, temperatures, Gumbel scales, guidance weights and schedules, orders and top-k.
A request's rows join at the next step boundary after `submit` and leave when its own schedule ends;
the request is then decoded to pixels (`MaskGIT.decode`, inpainting blended with
`generation.blend_into`) and completed at once, while the others keep running (what vLLM does for
language models, at the granularity of MaskGIT steps).

    batcher = ContinuousBatcher(pipe, max_rows=64)
    ticket = batcher.submit(SamplingRequest((207, 1), (0, 1), pipe.resolve_sampling({"steps": 12})))
    while batcher.busy:
        batcher.step()
    ticket.outcome.images  # (2, H, W, 3) uint8, the same pixels as pipe.generate((207, 1), seeds=(0, 1))

A request gives the same tokens and images whatever it shares its forwards with: every row draws its
noise from its own seed, and everything after the forward is computed row by row.

* Budget: a forward holds at most `max_rows` rows, counting a request's unconditional (guidance)
  rows: a request costs `images × (2 if cfg_weight > 0 else 1)`. Waiting requests are admitted
  first in, first out; one that does not fit waits (nothing overtakes it).
* Previews: `on_step` gets a `StepPreview` after each of the request's steps (this step's
  predictions, the still-masked positions, optionally decoded preview images).
* Cancellation: `Ticket.cancel()` drops the request: queued, it never starts; running, its rows
  leave before the next step.

Not thread-safe: one caller (an event loop or a thread) submits, cancels and steps.

Dimensions: B images of a request, h×w token grid, H×W pixels.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from generation.maskgit import MaskGIT
from generation.regions import blend_into
from transformer import SamplingConfig
from transformer.decode import DecodeRows, decode_step, start_rows
from weights import unwrap_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SamplingRequest:
    """What to sample: class-conditional images, or an inpainting of one image, `len(seeds)` times.

    Attributes:
        class_ids: class of each image.
        seeds: seed of each image.
        sampling: the resolved knobs (`MaskGIT.resolve_sampling`).
        image: for inpainting, the (H, W, 3) uint8 image at the model's resolution.
        region: for inpainting, the (h, w) bool token region to regenerate.
        start_step: first step of the schedule (class-guided editing).
        decode: decode the final tokens to images (False: tokens only).
        preview_images: also decode each step's predictions for the previews.
    """

    class_ids: tuple[int, ...]
    seeds: tuple[int, ...]
    sampling: SamplingConfig
    image: np.ndarray | None = None
    region: np.ndarray | None = None
    start_step: int = 0
    decode: bool = True
    preview_images: bool = False

    def __post_init__(self) -> None:
        if len(self.class_ids) != len(self.seeds) or not self.seeds:
            raise ValueError(
                f"a request needs one seed per image, got {len(self.class_ids)} classes and "
                f"{len(self.seeds)} seeds"
            )
        if (self.image is None) != (self.region is None):
            raise ValueError("an inpainting request carries both an image and a token region")

    @property
    def num_images(self) -> int:
        return len(self.seeds)

    @property
    def cost(self) -> int:
        """Forward rows the request may take per step: its images, doubled under guidance."""
        return self.num_images * (2 if self.sampling.cfg_weight > 0 else 1)


class StepPreview(NamedTuple):
    """A request's state after one of its steps."""

    step: int  # steps the request has run (1 … total_steps)
    total_steps: int
    # LongTensor[B, h, w] on the CPU: decided tokens + this step's samples; [MASK] (`mask_token_id`)
    # where nothing was sampled (order "halton": cells not reached yet; a step revealing nothing)
    predictions: torch.Tensor
    masked: torch.Tensor  # BoolTensor[B, h, w]: positions still masked after the step
    # (B, H, W, 3) uint8 (preview_images), else None: the predictions decoded, each position never
    # sampled so far shown as its latest sample (code 0 before the first)
    images: np.ndarray | None


class SamplingOutcome(NamedTuple):
    """A finished request."""

    tokens: torch.Tensor  # LongTensor[B, h, w] on the CPU
    images: np.ndarray | None  # (B, H, W, 3) uint8 (inpainting: blended into the image), or None
    shared_rows: int  # most images in one forward pass with this request's rows (its own included)


class StepReport(NamedTuple):
    """What one `ContinuousBatcher.step` did."""

    rows: int  # image rows advanced
    forward_rows: int  # rows of the forward pass (with the unconditional ones); 0 = no forward
    admitted: int  # requests that joined at this step
    finished: int  # requests completed after this step
    requests: int  # requests with rows in this step


class Ticket:
    """A submitted request: its state, its outcome, and a way to cancel it.

    Attributes:
        request: what was asked.
        id: a number unique within the batcher.
        outcome: the result once `done` (None when cancelled or failed).
        error: the exception that failed it, or None.
        steps_done: steps it has run.
    """

    def __init__(
        self,
        request: SamplingRequest,
        ticket_id: int,
        rows: DecodeRows,
        on_step: Callable[[Ticket, StepPreview], None] | None,
        on_done: Callable[[Ticket], None] | None,
    ) -> None:
        self.request, self.id = request, ticket_id
        self.rows: DecodeRows | None = rows  # its rows while queued
        self.on_step, self.on_done = on_step, on_done
        self.outcome: SamplingOutcome | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.steps_done = 0
        self.shared_rows = 0
        self.canvas: torch.Tensor | None = None  # (B, h, w) latest sample per position, for preview images

    @property
    def done(self) -> bool:
        """Finished, failed or cancelled."""
        return self.outcome is not None or self.error is not None or self.cancelled

    @property
    def total_steps(self) -> int:
        return self.request.sampling.steps - self.request.start_step

    def cancel(self) -> None:
        """Stop the request: it never starts, or its rows leave before the next step."""
        if not self.done:
            self.cancelled = True
            self._finish()

    def _finish(self) -> None:
        self.rows = None
        if self.on_done is not None:
            try:
                self.on_done(self)
            except Exception:  # a listener's bug must not stop the other requests
                logger.exception("on_done callback of request %d failed", self.id)


class ContinuousBatcher:
    """Runs many sampling requests at once, one packed forward pass per step.

    Args:
        pipe: the loaded models (put in eval mode here).
        max_rows: most rows per forward pass, unconditional rows included (>= 1).
    """

    def __init__(self, pipe: MaskGIT, *, max_rows: int = 64) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.pipe, self.max_rows = pipe, max_rows
        unwrap_model(pipe.transformer).eval()
        self._queue: deque[Ticket] = deque()
        self._running: list[Ticket] = []  # in row order
        self._rows: DecodeRows | None = None
        self._ids = itertools.count()
        self.forwards = 0  # forward passes run
        self.forward_rows = 0  # rows over all forward passes

    @property
    def busy(self) -> bool:
        """True while requests are queued or running."""
        return bool(self._queue) or bool(self._running)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    def submit(
        self,
        request: SamplingRequest,
        *,
        on_step: Callable[[Ticket, StepPreview], None] | None = None,
        on_done: Callable[[Ticket], None] | None = None,
    ) -> Ticket:
        """Queue a request; its rows join the running ones at the next step boundary.

        Inputs are checked here, so a bad request fails alone and at once.

        Args:
            request: what to sample.
            on_step: called after each of its steps with (ticket, preview).
            on_done: called once when it finishes, fails or is cancelled.

        Raises:
            ValueError: a bad request (class ids, region shape, start step), or one whose cost is
                over `max_rows`.
        """
        if request.cost > self.max_rows:
            raise ValueError(
                f"the request needs {request.cost} rows per forward pass ({request.num_images} images"
                f"{' × 2 for guidance' if request.cost > request.num_images else ''}); this batcher runs "
                f"at most {self.max_rows}"
            )
        rows = self._start_rows(request)
        ticket = Ticket(request, next(self._ids), rows, on_step, on_done)
        self._queue.append(ticket)
        return ticket

    def _start_rows(self, request: SamplingRequest) -> DecodeRows:
        pipe = self.pipe
        init = None
        if request.image is not None:
            region = torch.as_tensor(np.asarray(request.region, dtype=bool))
            if tuple(region.shape) != (pipe.grid_size, pipe.grid_size):
                raise ValueError(
                    f"region must be ({pipe.grid_size}, {pipe.grid_size}) tokens, got {tuple(region.shape)}"
                )
            known = pipe.encode(np.asarray(request.image)[None]).cpu()[0]  # (h, w)
            init = torch.where(region, pipe.config.mask_token_id, known).expand(request.num_images, -1, -1)
            init = init.to(pipe.device)
        return start_rows(
            pipe.transformer, list(request.class_ids), request.sampling, init_tokens=init,
            seeds=list(request.seeds), start_step=request.start_step,
        )  # fmt: skip

    def _admit(self) -> int:
        """Move queued requests into the running rows, first in first out, while they fit."""
        cost = sum(ticket.request.cost for ticket in self._running)
        parts = [] if self._rows is None else [self._rows]
        admitted = 0
        while self._queue:
            ticket = self._queue[0]
            if ticket.cancelled:
                self._queue.popleft()
                continue
            if cost + ticket.request.cost > self.max_rows:
                break
            self._queue.popleft()
            parts.append(ticket.rows)
            ticket.rows = None
            self._running.append(ticket)
            cost += ticket.request.cost
            admitted += 1
        if admitted:
            self._rows = DecodeRows.concat(parts)
        return admitted

    def _fail(self, tickets: list[Ticket], error: BaseException) -> None:
        """Fail `tickets` (the running ones, and any admitted meanwhile) with `error`; no rows are left."""
        self._running, self._rows = [], None
        for ticket in list(tickets):
            if not ticket.done:
                ticket.error = error
                ticket._finish()

    def fail_all(self, error: BaseException) -> int:
        """Fail every running and queued request with `error` (a driver's last resort when `step` raised).

        Returns:
            the number of requests failed.
        """
        tickets = [*self._running, *self._queue]
        self._queue.clear()
        self._fail(tickets, error)
        return len(tickets)

    def _keep(self, keep: list[Ticket]) -> None:
        """Keep only the rows of `keep` (a subsequence of the running tickets)."""
        if len(keep) == len(self._running):
            return
        indices, start, kept = [], 0, set(map(id, keep))
        for ticket in self._running:
            if id(ticket) in kept:
                indices.extend(range(start, start + ticket.request.num_images))
            start += ticket.request.num_images
        self._rows = self._rows.select(indices) if indices else None
        self._running = keep

    def step(self) -> StepReport | None:
        """Drop cancelled rows, admit waiting requests, run one packed step, complete finished requests.

        Returns:
            what the step did, or None when there was nothing to run.
        """
        try:
            self._keep([ticket for ticket in self._running if not ticket.cancelled])
            admitted = self._admit()
        except Exception as error:  # the rows' bookkeeping failed: what it touched fails, the loop goes on
            failed = len(self._running)
            logger.exception("admitting requests to a decoding step failed; failing its %d requests", failed)
            self._fail(self._running, error)
            return StepReport(0, 0, 0, failed, failed)
        if not self._running:
            return None
        tickets, rows = self._running, self._rows
        try:
            with self.pipe._autocast():
                result = decode_step(self.pipe.transformer, rows)
        except Exception as error:  # a device failure or a bug: every running request fails with it
            logger.exception("a decoding step failed; failing its %d requests", len(tickets))
            self._fail(tickets, error)
            return StepReport(len(rows), 0, admitted, len(tickets), len(tickets))
        self._rows = result.rows
        if result.forward_rows:
            self.forwards += 1
            self.forward_rows += result.forward_rows
        shared = int(result.in_forward.sum())
        grid = self.pipe.grid_size
        spans, start = [], 0
        for ticket in tickets:
            stop = start + ticket.request.num_images
            spans.append((ticket, start, stop))
            ticket.steps_done += 1
            if bool(result.in_forward[start:stop].any()):
                ticket.shared_rows = max(ticket.shared_rows, shared)
            start = stop
        finished = [(ticket, a, b) for ticket, a, b in spans if ticket.steps_done >= ticket.total_steps]
        try:
            self._previews(
                spans, result.predictions.view(-1, grid, grid), result.rows.masked.view(-1, grid, grid)
            )
        finally:  # whatever a listener did, finished requests complete and leave
            self._complete(finished, result.rows.tokens.view(-1, grid, grid))
            self._keep([ticket for ticket in tickets if not ticket.done])
        return StepReport(len(rows), result.forward_rows, admitted, len(finished), len(tickets))

    def _decode(self, grids: list[torch.Tensor]) -> list[np.ndarray]:
        """Decode each request's grids with a decoder call of its own.

        The decoder's last bits depend on its batch (CPU convolutions pick their kernels by batch
        size and thread count; measured: up to 5e-6, enough to move a uint8 pixel by 1), so requests
        are never mixed in one call: each gets the call `MaskGIT.generate` makes for it alone. (The
        transformer's forward gave every row bit-identical numbers in any batch, at 1 and 2 threads.)
        """
        return [self.pipe.decode(grid) for grid in grids]

    def _previews(self, spans: list, predictions: torch.Tensor, masked: torch.Tensor) -> None:
        listeners = [(t, a, b) for t, a, b in spans if t.on_step is not None and not t.cancelled]
        if not listeners:
            return
        predictions, masked = predictions.cpu(), masked.cpu()
        want = [(t, a, b) for t, a, b in listeners if t.request.preview_images]
        mask_id = self.pipe.config.mask_token_id
        for ticket, start, stop in want:  # positions not sampled at this step keep their last sample
            if ticket.canvas is None:
                ticket.canvas = torch.zeros_like(predictions[start:stop])
            ticket.canvas = torch.where(
                predictions[start:stop] == mask_id, ticket.canvas, predictions[start:stop]
            )
        try:
            pictures = dict(zip([id(t) for t, _, _ in want], self._decode([t.canvas for t, _, _ in want])))
        except Exception:  # previews are best effort: the request itself goes on
            logger.exception("decoding preview images failed")
            pictures = {}
        for ticket, start, stop in listeners:
            preview = StepPreview(
                ticket.steps_done, ticket.total_steps, predictions[start:stop], masked[start:stop],
                pictures.get(id(ticket)),
            )  # fmt: skip
            try:
                ticket.on_step(ticket, preview)
            except Exception:
                logger.exception("on_step callback of request %d failed", ticket.id)

    def _complete(self, finished: list, tokens: torch.Tensor) -> None:
        if not finished:
            return
        tokens = tokens.cpu()
        want = [(t, a, b) for t, a, b in finished if t.request.decode and not t.cancelled]
        try:
            pictures = dict(zip([id(t) for t, _, _ in want], self._decode([tokens[a:b] for _, a, b in want])))
        except Exception as error:  # the decoder failed: every request that needed it fails with it
            logger.exception("decoding finished requests failed")
            pictures, failed = {}, error
        else:
            failed = None
        for ticket, start, stop in finished:
            if ticket.cancelled:
                continue
            request = ticket.request
            images = pictures.get(id(ticket))
            try:
                if request.decode and images is None:
                    raise failed or RuntimeError("decoding failed")
                if images is not None and request.image is not None:  # the same blend as MaskGIT.inpaint
                    images = blend_into(images, request.image, np.asarray(request.region, dtype=bool))
                ticket.outcome = SamplingOutcome(tokens[start:stop].clone(), images, ticket.shared_rows)
            except Exception as error:
                ticket.error = error
            ticket._finish()

    def run_until_idle(self) -> int:
        """Step until nothing is queued or running; returns the number of steps run."""
        count = 0
        while self.busy:
            if self.step() is None:
                break
            count += 1
        return count
