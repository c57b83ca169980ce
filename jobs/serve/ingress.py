"""The service's HTTP face: a FastAPI app that validates requests and hands `SampleJob`s to a sampler.

`build_http_app(sampler, info, options)` returns the app the Serve ingress deployment serves
(`jobs/serve/app.py`). Routes (under the application's route prefix):

    POST /v1/generate   class-conditional images (`GenerateRequest`); `stream: true` answers
                        server-sent events, one per decoding step (jobs/serve/events.py)
    POST /v1/inpaint    regenerate a box or mask of an image, pixel-blended at the border (`InpaintRequest`)
    POST /v1/images/generations   OpenAI-shaped generation (jobs/serve/openai_images.py)
    GET  /v1/health     200 when the sampler answers, else 503
    GET  /v1/models     what is loaded: sizes, configs, class names, sampling defaults, limits
    GET  /docs, /openapi.json   the OpenAPI document, with this deployment's bounds (jobs/serve/limits.py)
    GET  /              the web page (jobs/serve/static/)

Every rejected request gets a JSON answer saying what is wrong (jobs/serve/errors.py): 400 malformed
JSON, 405 a method the route does not have (with `Allow`), 413 a body over `max_payload_bytes`
(checked before it is read), 422 an unknown field, a knob out of range, a class id the model does not
have, bad base64, an image that is not an image or not at the model's size. Error messages never name
server-side paths.

The `sampler` is any object with `async run(job) -> JobOutput | JobFailure`, `stream(job, previews)`
(an async iterator of the job's `StepEvent`s, then its `JobOutput` or `JobFailure`) and
`async ping() -> bool` (a Serve deployment handle wrapper in production; `ContinuousSampler` in tests).
"""

# No `from __future__ import annotations`: the routes' body models are built per deployment, and
# FastAPI must see them as objects.

import asyncio
import base64
import binascii
import functools
import html
import io
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from generation import box_to_token_region, mask_to_token_region, resolve_sampling
from jobs.serve import events, openai_images
from jobs.serve.engine import JobFailure, JobOutput, SampleJob, StepEvent
from jobs.serve.errors import PayloadLimitMiddleware, RequestError, error_response, install_error_handlers
from jobs.serve.limits import deployment_models
from jobs.serve.openai_images import (
    ClassNames,
    ImageData,
    ImagesResponse,
    OpenAIError,
    OpenAIErrorResponse,
    OpenAIRoute,
    bounded_request_model,
)
from jobs.serve.schema import (
    MAX_SEED,
    ErrorResponse,
    HealthResponse,
    InpaintRequest,
    ModelsResponse,
    SampledImage,
    SampleResponse,
    SamplingFields,
    SamplingKnobs,
    ServeOptions,
)
from pipeline.images import ImageRejected, decode_image
from transformer.config import SamplingConfig

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 10.0
STATIC_DIR = Path(__file__).with_name("static")


class Sampler(Protocol):
    async def run(self, job: SampleJob) -> JobOutput | JobFailure: ...

    def stream(
        self, job: SampleJob, previews: str = "tokens"
    ) -> AsyncIterator[StepEvent | JobOutput | JobFailure]: ...

    async def ping(self) -> bool: ...


def _decode_base64(text: str, field: str) -> bytes:
    if text.startswith("data:") and "," in text:  # accept data URLs as browsers write them
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, f"{field} is not valid base64") from None
    if not data:
        raise RequestError(422, f"{field} is empty")
    return data


def _decode_uploaded_image(text: str, field: str, max_side: int, size: int) -> np.ndarray:
    """base64 image -> (size, size, 3) uint8, refusing oversized headers before decoding pixels."""
    data = _decode_base64(text, field)
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Exception:
        raise RequestError(
            422, f"{field} is not an image this server can read (PNG, JPEG, WebP, …)"
        ) from None
    if max(width, height) > max_side:
        raise RequestError(
            422, f"{field} is {width}×{height} pixels; this server accepts sides up to {max_side}"
        )
    try:
        pixels = decode_image(data, min_side=1)
    except ImageRejected as error:
        raise RequestError(422, f"{field} could not be decoded ({error.reason})") from None
    if pixels.shape[:2] != (size, size):
        raise RequestError(
            422,
            f"{field} is {pixels.shape[1]}×{pixels.shape[0]} pixels; this model works on {size}×{size} "
            "images (resize or crop it first)",
        )
    return pixels


class _RequestChecker:
    """Model-dependent checks, turning a validated request into a `SampleJob`."""

    def __init__(self, info: dict[str, Any], options: ServeOptions):
        self.info, self.options = info, options
        self.defaults = SamplingConfig.from_dict(info["sampling_defaults"])

    def _sampling(self, request: SamplingKnobs) -> SamplingConfig:
        knobs = self.defaults.to_dict()
        given = {name: value for name, value in request.model_dump().items() if name in knobs}
        given = {name: value for name, value in given.items() if value is not None}
        try:
            return resolve_sampling(self.defaults, given)
        except ValueError as error:
            raise RequestError(422, str(error)) from None

    def _check_classes(self, class_ids: list[int]) -> None:
        # The request models bound both (jobs/serve/limits.py); this guards direct callers.
        limit, count = self.options.max_images_per_request, self.info["num_classes"]
        if len(class_ids) > limit:
            raise RequestError(422, f"{len(class_ids)} images requested; this server allows at most {limit}")
        bad = [f"{c}" for c in class_ids if not 0 <= c < count]
        if bad:
            raise RequestError(
                422, f"class id(s) {', '.join(bad[:5])} out of range: this model has {count} classes"
            )

    def _seeds(self, request: SamplingKnobs, count: int) -> tuple[int, tuple[int, ...]]:
        drawn = MAX_SEED - self.options.max_images_per_request  # every seed + i stays below MAX_SEED
        base = request.seed if request.seed is not None else secrets.randbelow(drawn)
        return base, tuple(base + i for i in range(count))

    def generate_job(
        self, request: SamplingKnobs, class_ids: list[int], output: str = "png"
    ) -> tuple[int, SampleJob]:
        self._check_classes(class_ids)
        sampling = self._sampling(request)
        base, seeds = self._seeds(request, len(class_ids))
        return base, SampleJob("generate", tuple(class_ids), seeds, sampling, output)

    def inpaint_job(self, request: InpaintRequest) -> tuple[int, SampleJob]:
        class_ids = [request.class_id] * request.count
        self._check_classes(class_ids)
        sampling = self._sampling(request)
        size, max_side = self.info["image_size"], self.options.max_image_side
        image = _decode_uploaded_image(request.image, "image", max_side, size)
        try:
            if request.box is not None:
                box = request.box  # the part past the border is ignored (top, left < size by the model)
                height, width = min(box.height, size - box.top), min(box.width, size - box.left)
                factor = self.info["downsample_factor"]
                if request.margin == 0 and min(height, width) < factor:
                    raise RequestError(
                        422, f"with margin 0 the box must hold a whole {factor}×{factor}-pixel token inside "
                        f"the image: height, width >= {factor} and top, left <= {size - factor}",
                    )  # fmt: skip
                region = box_to_token_region(
                    (box.top, box.left, height, width), size, self.info["downsample_factor"],
                    margin=request.margin,
                )  # fmt: skip
            else:
                pixel_mask = _decode_uploaded_image(request.mask, "mask", max_side, size).max(axis=2) > 127
                region = mask_to_token_region(pixel_mask, self.info["downsample_factor"])
        except ValueError as error:  # the region checks of generation/: an empty mask
            raise RequestError(422, str(error)) from None
        base, seeds = self._seeds(request, len(class_ids))
        job = SampleJob("inpaint", tuple(class_ids), seeds, sampling, request.output, image, region)
        return base, job


def _response(info: dict, base_seed: int, job: SampleJob, output: JobOutput) -> SampleResponse:
    images = []
    for index, (class_id, seed) in enumerate(zip(job.class_ids, job.seeds)):
        images.append(
            SampledImage(
                index=index,
                class_id=class_id,
                seed=seed,
                png=base64.b64encode(output.pngs[index]).decode("ascii") if output.pngs else None,
                tokens=output.tokens[index].tolist() if output.tokens is not None else None,
            )
        )
    return SampleResponse(
        model=info["name"],
        seed=base_seed,
        sampling=job.sampling.to_dict(),
        images=images,
        batch_images=output.batch_images,
    )


def _render(path: str, status: int, error: str, details: list[str]) -> JSONResponse:
    """Error answers: OpenAI's shape on the OpenAI-shaped route, `ErrorResponse` elsewhere."""
    if path.rstrip("/").endswith(openai_images.ROUTE):
        kind = OpenAIError(status, error, code="request_too_large" if status == 413 else None)
        return JSONResponse(kind.body(), status_code=status)
    return error_response(status, error, details)


def _documented(model: type, *statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model} for status in statuses}


def build_http_app(sampler: Sampler, info: dict[str, Any], options: ServeOptions) -> FastAPI:
    """The FastAPI app of the service.

    Args:
        sampler: runs jobs (`run`, `stream`) and answers health checks (`ping`).
        info: `SamplerEngine.info()` of the loaded model.
        options: limits and names.

    Returns:
        FastAPI app with the /v1 routes, the web page at /, error handlers and the payload limit.
    """
    app = FastAPI(
        title="MaskGIT sampler",
        version="1",
        description="Class-conditional generation and inpainting with a MaskGIT transformer + VQGAN. "
        "Concurrent requests share the sampler's forward passes; image i of a request uses seed + i, so "
        "results do not depend on what else runs. Every error answer is JSON. A web page is served at /.",
    )
    checker = _RequestChecker(info, options)
    models = deployment_models(options, info)
    classes = ClassNames(info.get("class_names"), info["num_classes"])
    size = info["image_size"]
    ImagesRequest = bounded_request_model(
        info["name"], size, options.max_images_per_request, options.max_steps, classes
    )
    app.add_middleware(PayloadLimitMiddleware, max_bytes=options.max_payload_bytes, render=_render)
    install_error_handlers(app, _render)
    errors = _documented(ErrorResponse, 400, 413, 422, 500, 503)

    async def _run(job: SampleJob) -> JobOutput:
        try:
            output = await sampler.run(job)
        except Exception:
            logger.exception("the sampler deployment failed")
            raise RequestError(503, "the sampler is unavailable; retry later") from None
        if isinstance(output, JobFailure):
            raise RequestError(422 if output.client_error else 500, output.message)
        return output

    async def _answer(job: SampleJob, base_seed: int, request: SamplingFields):
        if not request.stream:
            return _response(info, base_seed, job, await _run(job))
        finish = functools.partial(_response, info, base_seed, job)
        return events.streaming_response(sampler.stream(job, request.previews), finish)

    @app.post("/v1/generate", response_model=SampleResponse, responses=errors)
    async def generate(request: models.generate) -> SampleResponse:
        """Generate images of the given classes (`stream: true`: watch them decode step by step)."""
        base_seed, job = checker.generate_job(request, request.requested_class_ids(), request.output)
        return await _answer(job, base_seed, request)

    @app.post("/v1/inpaint", response_model=SampleResponse, responses=errors)
    async def inpaint(request: models.inpaint) -> SampleResponse:
        """Regenerate a box or mask of an image for a class (pixel-blended at the border)."""
        base_seed, job = checker.inpaint_job(request)
        return await _answer(job, base_seed, request)

    async def images_generations(request: ImagesRequest) -> ImagesResponse:
        """OpenAI-shaped generation: `prompt` is a class id or name, `n` images, `b64_json` back."""
        try:
            class_id = classes.resolve(request.prompt)
            _, job = checker.generate_job(request, [class_id] * (request.n or 1))
            output = await _run(job)
        except RequestError as error:
            raise OpenAIError(400 if error.status == 422 else error.status, error.error) from None
        data = [
            ImageData(b64_json=base64.b64encode(png).decode("ascii"), revised_prompt=classes.name(class_id),
                      seed=seed)
            for png, seed in zip(output.pngs, job.seeds)
        ]  # fmt: skip
        return ImagesResponse(created=int(time.time()), data=data)

    app.router.add_api_route(
        openai_images.ROUTE, images_generations, methods=["POST"], response_model=ImagesResponse,
        responses=_documented(OpenAIErrorResponse, 400, 413, 500, 503), route_class_override=OpenAIRoute,
    )  # fmt: skip

    @app.get("/v1/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health() -> JSONResponse:
        """200 when the sampler answers within a few seconds, else 503."""
        try:
            ready = await asyncio.wait_for(sampler.ping(), HEALTH_TIMEOUT_S)
        except Exception:
            ready = False
        body = {"status": "ok" if ready else "unavailable", "model": info["name"]}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/v1/models", response_model=ModelsResponse)
    async def list_models() -> dict[str, Any]:
        """The loaded model: sizes, configs, class names, sampling defaults, and this server's limits."""
        limits = {
            name: getattr(options, name)
            for name in ("max_images_per_request", "max_steps", "max_payload_bytes", "max_image_side")
        }
        return {"models": [{**info, "limits": limits, "max_batch_images": options.max_batch_images}]}

    page_html = (STATIC_DIR / "index.html").read_text()

    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        """The web page (jobs/serve/static/); its relative URLs resolve under the route prefix."""
        base = request.scope.get("root_path", "").rstrip("/") + "/"
        return HTMLResponse(page_html.replace('<base href="/">', f'<base href="{html.escape(base)}">'))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            streamed = ["/v1/generate", "/v1/inpaint"]
            app.openapi_schema = events.document_streams(FastAPI.openapi(app), streamed)
        return app.openapi_schema

    app.openapi = openapi
    return app
