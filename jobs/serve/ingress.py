"""The service's HTTP face: a FastAPI app that validates requests and hands `SampleJob`s to a sampler.

`build_http_app(sampler, info, options)` returns the app the Serve ingress deployment serves
(`jobs/serve/app.py`). Routes (under the application's route prefix):

    POST /v1/generate   class-conditional images (`GenerateRequest`)
    POST /v1/inpaint    regenerate a box or mask of an image, pixel-blended at the border (`InpaintRequest`)
    GET  /v1/health     200 when the sampler answers, else 503
    GET  /v1/models     what is loaded: sizes, configs, sampling defaults, limits
    GET  /docs, /openapi.json   FastAPI's OpenAPI documentation

Every rejected request gets a 4xx with an `ErrorResponse` body saying what is wrong: 400 malformed
JSON, 413 a body over `max_payload_bytes` (checked before it is read), 422 an unknown field, a knob
out of range, a class id the model does not have, bad base64, an image that is not an image or not
at the model's size. Error messages never name server-side paths.

The `sampler` is any object with `async run(job) -> JobOutput | JobFailure` and `async ping() -> bool`
(a Serve deployment handle wrapper in production).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import secrets
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from generation import box_to_token_region, mask_to_token_region, resolve_sampling
from jobs.serve.engine import JobFailure, JobOutput, SampleJob
from jobs.serve.schema import (
    MAX_SEED,
    ErrorResponse,
    GenerateRequest,
    InpaintRequest,
    SampledImage,
    SampleResponse,
    SamplingFields,
    ServeOptions,
)
from pipeline.images import ImageRejected, decode_image
from transformer.config import SamplingConfig

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 10.0


class Sampler(Protocol):
    async def run(self, job: SampleJob) -> JobOutput | JobFailure: ...

    async def ping(self) -> bool: ...


class RequestError(Exception):
    """A request the service refuses; becomes an `ErrorResponse` with `status`."""

    def __init__(self, status: int, error: str, details: list[str] | None = None):
        super().__init__(error)
        self.status, self.error, self.details = status, error, details or []


def _error_response(status: int, error: str, details: list[str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=error, details=details or []).model_dump(), status_code=status)


class PayloadLimitMiddleware:
    """Pure ASGI middleware answering 413 to bodies over `max_bytes`: by Content-Length before reading,
    or while streaming a body sent without one."""

    class _TooLarge(Exception):
        pass

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: str) -> JSONResponse:
        return _error_response(
            413, f"request body is {size} bytes; this server accepts at most {self.max_bytes} bytes"
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(length.decode())(scope, receive, send)
        received, exceeded, replaced = 0, False, False

        async def limited_receive():
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise self._TooLarge
            return message

        async def guarded_send(message):
            # FastAPI turns an error while reading the body into its own 400; answer 413 instead.
            nonlocal replaced
            if not exceeded:
                return await send(message)
            if message["type"] == "http.response.start" and not replaced:
                replaced = True
                await self._too_large(f"more than {self.max_bytes}")(scope, receive, send)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except self._TooLarge:
            if not replaced:
                replaced = True
                await self._too_large(f"more than {self.max_bytes}")(scope, receive, send)


def _field_path(loc: tuple) -> str:
    parts = [str(part) for part in loc if part != "body"]
    return ".".join(parts) if parts else "body"


def _describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """Pydantic/FastAPI errors -> (status, one readable line per problem)."""
    status, lines = 422, []
    for error in errors:
        kind, path, message = (
            error.get("type", ""),
            _field_path(tuple(error.get("loc", ()))),
            error.get("msg", ""),
        )
        if kind == "json_invalid":
            status = 400
            reason = (error.get("ctx") or {}).get("error", message)
            lines.append(f"malformed JSON: {reason}")
        elif kind == "extra_forbidden":
            lines.append(f"unknown field '{path}'")
        elif kind in ("model_attributes_type", "dict_type") and path == "body":
            lines.append("the body must be a JSON object (sent with Content-Type: application/json)")
        elif kind == "missing":
            lines.append(f"missing field '{path}'")
        else:
            message = message.removeprefix("Value error, ")
            shown = repr(error.get("input"))
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            lines.append(message if path == "body" else f"{path}: {message} (got {shown})")
    return status, lines


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

    def _sampling(self, request: SamplingFields) -> SamplingConfig:
        if request.steps is not None and request.steps > self.options.max_steps:
            raise RequestError(
                422, f"steps is {request.steps}; this server allows at most {self.options.max_steps}"
            )
        knobs = self.defaults.to_dict()
        given = {name: value for name, value in request.model_dump().items() if name in knobs}
        try:
            return resolve_sampling(self.defaults, given)
        except ValueError as error:
            raise RequestError(422, str(error)) from None

    def _check_classes(self, class_ids: list[int]) -> None:
        limit = self.options.max_images_per_request
        if len(class_ids) > limit:
            raise RequestError(422, f"{len(class_ids)} images requested; this server allows at most {limit}")
        count = self.info["num_classes"]
        bad = [f"{c}" for c in class_ids if not 0 <= c < count]
        if bad:
            raise RequestError(
                422,
                f"class id(s) {', '.join(bad[:5])} out of range: this model has {count} classes "
                f"(0–{count - 1})",
            )

    @staticmethod
    def _seeds(request: SamplingFields, count: int) -> tuple[int, tuple[int, ...]]:
        base = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED)
        return base, tuple(base + i for i in range(count))

    def generate_job(self, request: GenerateRequest) -> tuple[int, SampleJob]:
        class_ids = request.requested_class_ids()
        self._check_classes(class_ids)
        sampling = self._sampling(request)
        base, seeds = self._seeds(request, len(class_ids))
        return base, SampleJob("generate", tuple(class_ids), seeds, sampling, request.output)

    def inpaint_job(self, request: InpaintRequest) -> tuple[int, SampleJob]:
        class_ids = [request.class_id] * request.count
        self._check_classes(class_ids)
        sampling = self._sampling(request)
        size, max_side = self.info["image_size"], self.options.max_image_side
        image = _decode_uploaded_image(request.image, "image", max_side, size)
        try:
            if request.box is not None:
                box = request.box
                region = box_to_token_region(
                    (box.top, box.left, box.height, box.width), size, self.info["downsample_factor"],
                    margin=request.margin,
                )  # fmt: skip
            else:
                pixel_mask = _decode_uploaded_image(request.mask, "mask", max_side, size).max(axis=2) > 127
                region = mask_to_token_region(pixel_mask, self.info["downsample_factor"])
        except ValueError as error:  # the region checks of generation/: box past the image, empty mask
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


def build_http_app(sampler: Sampler, info: dict[str, Any], options: ServeOptions) -> FastAPI:
    """The FastAPI app of the service.

    Args:
        sampler: runs jobs (`run`) and answers health checks (`ping`).
        info: `SamplerEngine.info()` of the loaded model.
        options: limits and names.

    Returns:
        FastAPI app with the /v1 routes, error handlers and the payload limit.
    """
    app = FastAPI(
        title="MaskGIT sampler",
        version="1",
        description="Class-conditional generation and inpainting with a MaskGIT transformer + VQGAN. "
        "Requests with the same knobs are batched together; image i of a request uses seed + i, so "
        "results do not depend on batching.",
    )
    checker = _RequestChecker(info, options)
    app.add_middleware(PayloadLimitMiddleware, max_bytes=options.max_payload_bytes)
    errors = {422: {"model": ErrorResponse}, 400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}}

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        status, lines = _describe_validation_errors(list(error.errors()))
        return _error_response(status, "; ".join(lines), lines)

    @app.exception_handler(RequestError)
    async def _refused(_: Request, error: RequestError) -> JSONResponse:
        return _error_response(error.status, error.error, error.details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = str(error.detail)
        if error.status_code == 404:
            detail = f"no route {request.url.path}; see /docs for the API"
        return _error_response(error.status_code, detail)

    async def _run(job: SampleJob) -> JobOutput:
        try:
            output = await sampler.run(job)
        except Exception:
            logger.exception("the sampler deployment failed")
            raise RequestError(503, "the sampler is unavailable; retry later") from None
        if isinstance(output, JobFailure):
            raise RequestError(422 if output.client_error else 500, output.message)
        return output

    @app.post("/v1/generate", response_model=SampleResponse, responses=errors)
    async def generate(request: GenerateRequest) -> SampleResponse:
        """Generate images of the given classes."""
        base_seed, job = checker.generate_job(request)
        return _response(info, base_seed, job, await _run(job))

    @app.post("/v1/inpaint", response_model=SampleResponse, responses=errors)
    async def inpaint(request: InpaintRequest) -> SampleResponse:
        """Regenerate a box or mask of an image for a class (pixel-blended at the border)."""
        base_seed, job = checker.inpaint_job(request)
        return _response(info, base_seed, job, await _run(job))

    @app.get("/v1/health")
    async def health() -> JSONResponse:
        """200 when the sampler answers within a few seconds, else 503."""
        try:
            ready = await asyncio.wait_for(sampler.ping(), HEALTH_TIMEOUT_S)
        except Exception:
            ready = False
        body = {"status": "ok" if ready else "unavailable", "model": info["name"]}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The loaded model: sizes, configs, sampling defaults, and this server's limits."""
        limits = {
            name: getattr(options, name)
            for name in ("max_images_per_request", "max_steps", "max_payload_bytes", "max_image_side")
        }
        return {"models": [{**info, "limits": limits, "max_batch_images": options.max_batch_images}]}

    return app
