"""`ContinuousSampler`: the engine's step-level batcher driven by an asyncio task (no Ray here).

The Serve sampler deployment (`jobs/serve/app.py`, `batching="continuous"`) holds one of these.
Requests are submitted to a `generation.ContinuousBatcher` as they arrive; one background task runs
its steps back to back while any request is queued or running and sleeps otherwise. Each step is
one packed forward pass over every running request's rows; between steps the task yields to the
event loop, so new requests join at the next step boundary and previews go out as they happen.

    sampler = ContinuousSampler(engine, max_rows=64)
    output = await sampler.run(job)                     # JobOutput | JobFailure, as the merge path
    async for event in sampler.stream(job):             # StepEvent …, then JobOutput | JobFailure
        ...

Cancelling the awaiting task (Serve does when the HTTP client goes away), or closing the stream,
cancels the request: its rows leave the batch before the next step.

Steps run on the event loop itself: they are short (one forward), and between two of them every
request that arrived meanwhile is submitted, so it joins the very next step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from generation.continuous import Ticket
from jobs.serve.engine import JobFailure, JobOutput, SampleJob, SamplerEngine, StepEvent, failure_from

logger = logging.getLogger(__name__)


class ContinuousSampler:
    """Runs `SampleJob`s on a `ContinuousBatcher` from one asyncio task.

    Args:
        engine: the loaded models.
        max_rows: most rows per forward pass, unconditional (guidance) rows included.
    """

    def __init__(self, engine: SamplerEngine, *, max_rows: int) -> None:
        self.engine = engine
        self.batcher = engine.batcher(max_rows)
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def _submit(self, job: SampleJob, previews: str | None, on_step, on_done) -> Ticket | JobFailure:
        try:
            request = self.engine.request(job, previews=previews)
            ticket = self.batcher.submit(request, on_step=on_step, on_done=on_done)
        except Exception as error:  # input checks of the library: this job fails alone, at once
            return failure_from(error)
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._drive())
        self._wakeup.set()
        return ticket

    def _result(self, job: SampleJob, ticket: Ticket) -> JobOutput | JobFailure:
        if ticket.error is not None:  # inputs were checked at submit: what fails later is the server's
            logger.error("sampling failed for a job", exc_info=ticket.error)
            return JobFailure("the sampler failed; see the server log", client_error=False)
        try:
            return self.engine.job_output(job, ticket.outcome)
        except Exception as error:
            return failure_from(error)

    async def _drive(self) -> None:
        """Step while anything is queued or running; sleep until the next submit otherwise."""
        while True:
            if not self.batcher.busy:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                self.batcher.step()  # blocking, on purpose (see the module docstring)
            except Exception as error:  # the batcher fails its own requests; this guards the loop
                # Whatever broke, no request may wait for a step that keeps failing: fail them all.
                failed = self.batcher.fail_all(error)
                logger.exception("a continuous batching step failed; failed its %d requests", failed)
            await asyncio.sleep(0)  # let arrived requests submit and previews go out

    async def ping(self) -> bool:
        """Health check: answering at all means the loop is free (a step never blocks for long)."""
        return True

    async def run(self, job: SampleJob) -> JobOutput | JobFailure:
        """Sample `job` among whatever else is running; its output once its own steps are done."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_done(ticket: Ticket) -> None:
            if not future.done() and not ticket.cancelled:
                future.set_result(self._result(job, ticket))

        ticket = self._submit(job, None, None, on_done)
        if isinstance(ticket, JobFailure):
            return ticket
        try:
            return await future
        except asyncio.CancelledError:
            ticket.cancel()  # the caller went away: free the rows
            raise

    async def stream(
        self, job: SampleJob, previews: str = "tokens"
    ) -> AsyncIterator[StepEvent | JobOutput | JobFailure]:
        """Sample `job`, yielding a `StepEvent` after each of its steps, then its JobOutput or JobFailure.

        Args:
            job: what to sample.
            previews: "tokens" (predictions and masks) or "images" (also PNGs of the predictions).
        """
        queue: asyncio.Queue = asyncio.Queue()

        def on_step(_: Ticket, preview) -> None:
            queue.put_nowait(self.engine.step_event(preview))

        def on_done(ticket: Ticket) -> None:
            if not ticket.cancelled:
                queue.put_nowait(self._result(job, ticket))

        ticket = self._submit(job, previews, on_step, on_done)
        if isinstance(ticket, JobFailure):
            yield ticket
            return
        try:
            while True:
                event = await queue.get()
                yield event
                if not isinstance(event, StepEvent):
                    return
        finally:
            ticket.cancel()  # a no-op once done; a consumer that stops early frees the rows
