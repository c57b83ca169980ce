"""Streamed answers: a sampling job's steps as server-sent events (`text/event-stream`).

With `"stream": true`, `/v1/generate` and `/v1/inpaint` answer 200 with a stream of events once the
request is valid (an invalid request still gets its 4xx JSON answer):

    event: step      data: {"step": 1, "steps": 8, "images": [{"index": 0, "tokens": [[...]],
                            "masked": [[...]], "png": "<base64 preview>" | null}, ...]}
    event: result    data: the same JSON object the non-streamed request answers (SampleResponse)
    event: error     data: {"error": "...", "details": [...], "status": 422 | 500 | 503}

`step` events come one per decoding step, in order (`jobs.serve.engine.StepEvent`): `tokens` is the
h×w grid of codes decided so far plus this step's samples where still masked, `masked` marks the
positions not yet decided, and `png` is the grid decoded (only with `"previews": "images"`). Exactly
one `result` or `error` event ends the stream; a client that goes away cancels the job. Browsers read
the stream with `fetch` and a stream reader (EventSource cannot POST); see jobs/serve/static/app.js.
`document_streams` puts the event schema into the OpenAPI document.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from jobs.serve.engine import JobFailure, JobOutput
from jobs.serve.engine import StepEvent as SamplerStep

logger = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
SUMMARY = "the images (JSON), or with `stream: true` a text/event-stream of step, result and error events"


class StepImage(BaseModel):
    """One image of a `step` event."""

    index: int
    tokens: list[list[int]] = Field(
        description="h×w codes: decided ones, and this step's samples where still masked ([MASK], the "
        "codebook size, where nothing was sampled yet: Halton order)"
    )
    masked: list[list[bool]] = Field(description="h×w: true where the code is not decided yet")
    png: str | None = Field(
        None, description="base64 PNG of the tokens decoded as they are (with previews: 'images'), else null"
    )


class StepData(BaseModel):
    """Data of a `step` event: where decoding stands after step `step` of `steps`."""

    step: int
    steps: int
    images: list[StepImage]


class StreamError(BaseModel):
    """Data of an `error` event: what a 4xx/5xx JSON answer would have said."""

    error: str
    details: list[str] = Field(default_factory=list)
    status: int = Field(description="the HTTP status the failure would have had")


def _event(name: str, model: str) -> dict[str, Any]:
    data = {
        "contentMediaType": "application/json",
        "contentSchema": {"$ref": f"#/components/schemas/{model}"},
    }
    return {"properties": {"event": {"const": name}, "data": data}}


EVENT_SCHEMA = {
    "type": "object",
    "description": "one server-sent event: `event` names it, `data` is one line of JSON",
    "required": ["event", "data"],
    "properties": {"event": {"enum": ["step", "result", "error"]}, "data": {"type": "string"}},
    "oneOf": [
        _event("step", "StepData"),
        _event("result", "SampleResponse"),
        _event("error", "StreamError"),
    ],
}


def document_streams(document: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """Add the event stream to the 200 answer of each POST route in `paths` of an OpenAPI document."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for model in (StepData, StreamError):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    for path in paths:
        answer = document["paths"][path]["post"]["responses"]["200"]
        answer["content"][MEDIA_TYPE] = {"schema": EVENT_SCHEMA}
        answer["description"] = SUMMARY
    return document


def sse(event: str, data: Any) -> bytes:
    """One server-sent event: `event: <name>` and one `data:` line of compact JSON."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _grid(value: Any) -> list | None:
    return None if value is None else np.asarray(value).tolist()


def step_payload(update: SamplerStep) -> dict[str, Any]:
    """The data of the `step` event of one `StepEvent`."""
    tokens, masked = np.asarray(update.tokens), np.asarray(update.masked)
    previews = update.pngs
    images = []
    for index in range(len(tokens)):
        png = previews[index] if previews is not None else None
        images.append(
            {
                "index": index,
                "tokens": _grid(tokens[index]),
                "masked": _grid(masked[index].astype(bool)),
                "png": base64.b64encode(png).decode("ascii") if png is not None else None,
            }
        )
    return {"step": int(update.step), "steps": int(update.total_steps), "images": images}


async def event_stream(
    updates: AsyncIterator[Any], finish: Callable[[JobOutput], Any]
) -> AsyncIterator[bytes]:
    """The events of one job: a `step` per update, then `result` (via `finish`) or `error`."""
    try:
        async for item in updates:
            if isinstance(item, JobOutput):
                yield sse("result", finish(item).model_dump())
                return
            if isinstance(item, JobFailure):
                status = 422 if item.client_error else 500
                yield sse("error", {"error": item.message, "details": [], "status": status})
                return
            yield sse("step", step_payload(item))
        yield sse("error", {"error": "the sampler ended the stream without a result", "details": [],
                            "status": 500})  # fmt: skip
    except Exception:
        logger.exception("the sampler's stream failed")
        yield sse("error", {"error": "the sampler is unavailable; retry later", "details": [], "status": 503})


def streaming_response(updates: AsyncIterator[Any], finish: Callable[[JobOutput], Any]) -> StreamingResponse:
    """A 200 `text/event-stream` answer of a job's `updates` (proxies are asked not to buffer it)."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(event_stream(updates, finish), media_type=MEDIA_TYPE, headers=headers)
