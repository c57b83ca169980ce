"""The service's HTTP face: a FastAPI app that validates requests and hands `SampleJob`s to a sampler.

`build_http_app(sampler, info, options)` returns the app the Serve ingress deployment serves
(`jobs/serve/app.py`). Routes (under the application's route prefix):

    POST /v1/generate   class-conditional images (`GenerateRequest`); `stream: true` answers
                        server-sent events, one per decoding step (jobs/serve/events.py)
    POST /v1/inpaint    regenerate a box or mask of an image, pixel-blended at the border (`InpaintRequest`)
    POST /v1/images/generations   OpenAI-shaped generation (jobs/serve/openai_images.py)
    POST /v1/images/edits         OpenAI-shaped inpainting (multipart: image, mask, prompt)
    GET  /v1/health     200 when the sampler answers, else 503
    GET  /v1/models     OpenAI's model list (the served model); /v1/models/{id}: its sizes, configs,
                        class names, sampling defaults and this server's limits
    GET  /docs, /openapi.json   the OpenAPI document, with this deployment's bounds (jobs/serve/limits.py)
    GET  /              the web page (jobs/serve/static/)

Every rejected request gets a JSON answer saying what is wrong (jobs/serve/errors.py): 400 malformed
JSON, 405 a method the route does not have (with `Allow`), 413 a body over `max_payload_bytes`
(checked before it is read), 422 an unknown field, a knob out of range, a class id the model does not
have, bad base64, an image that is not an image or not at the model's size. Error messages never name
server-side paths. Under `/v1/images/` every error answer (404 and 405 included) is OpenAI-shaped.
With API keys (`api_key_digests`, jobs/serve/auth.py) every `/v1/` route but `/v1/health` answers 401
to a request without one.

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
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import fastapi_offline
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import ValidationError

from generation import box_to_token_region, mask_to_token_region, resolve_sampling
from jobs.serve import events, openai_images
from jobs.serve.auth import OPEN_ROUTES, ApiKeyMiddleware
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
    ModelDetails,
    ModelList,
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
# Swagger UI's JavaScript and CSS as the fastapi-offline package ships them (kept current with Swagger UI).
SWAGGER_DIR = Path(fastapi_offline.__file__).with_name("static")
DOCS_ASSETS = "/docs-assets"


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
    return _decode_image_bytes(_decode_base64(text, field), field, max_side, size)


def _decode_image_bytes(data: bytes, field: str, max_side: int, size: int) -> np.ndarray:
    """Encoded image -> (size, size, 3) uint8, refusing oversized headers before decoding pixels."""
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


def _transparent_pixels(data: bytes, field: str, size: int) -> np.ndarray:
    """(size, size) bool: the pixels of an encoded image with alpha below 128 (OpenAI's "edit here")."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.size != (size, size):
                raise OpenAIError(
                    400, f"{field} is {opened.size[0]}×{opened.size[1]} pixels; this model works on "
                    f"{size}×{size} images", param=field, code="invalid_value",
                )  # fmt: skip
            has_alpha = "A" in opened.getbands() or "transparency" in opened.info
            alpha = np.asarray(opened.convert("RGBA"))[..., 3] if has_alpha else None
    except OpenAIError:
        raise
    except Exception:
        raise OpenAIError(400, f"{field} is not an image this server can read (PNG, WebP, …)", param=field,
                          code="invalid_value") from None  # fmt: skip
    if alpha is None:
        raise OpenAIError(
            400, f"{field} has no alpha channel: its transparent pixels say what to regenerate (give a PNG "
            "with transparency as mask)", param=field, code="invalid_value",
        )  # fmt: skip
    return alpha < 128


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

    def edit_job(
        self, request: SamplingKnobs, class_ids: list[int], image: np.ndarray, region: np.ndarray
    ) -> tuple[int, SampleJob]:
        """An inpainting job for an already decoded image and token region (OpenAI's edits)."""
        self._check_classes(class_ids)
        sampling = self._sampling(request)
        base, seeds = self._seeds(request, len(class_ids))
        return base, SampleJob("inpaint", tuple(class_ids), seeds, sampling, "png", image, region)

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


_OPENAI_CODES = {
    401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
}  # fmt: skip


def _render(path: str, status: int, error: str, details: list[str]) -> JSONResponse:
    """Error answers: OpenAI's shape on the OpenAI-shaped route, `ErrorResponse` elsewhere."""
    if openai_images.PREFIX + "/" in path or path.rstrip("/").endswith(openai_images.PREFIX):
        if status == 404 and path.rstrip("/").endswith("/variations"):
            error = "image variations are not supported; POST /v1/images/edits regenerates a masked region"
        code = _OPENAI_CODES.get(status)
        return JSONResponse(OpenAIError(status, error, code=code).body(), status_code=status)
    return error_response(status, error, details)


def _document_keys(document: dict[str, Any]) -> dict[str, Any]:
    """Mark every keyed route of an OpenAPI document as needing a bearer key (/docs then has "Authorize")."""
    schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["apiKey"] = {"type": "http", "scheme": "bearer", "description": "one of the server's API keys"}
    for path, operations in document.get("paths", {}).items():
        if path.startswith("/v1/") and path not in OPEN_ROUTES:
            for operation in operations.values():
                operation["security"] = [{"apiKey": []}]
    return document


def _documented(model: type, *statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model} for status in statuses}


def build_http_app(
    sampler: Sampler, info: dict[str, Any], options: ServeOptions, api_key_digests: Sequence[str] = ()
) -> FastAPI:
    """The FastAPI app of the service.

    Args:
        sampler: runs jobs (`run`, `stream`) and answers health checks (`ping`).
        info: `SamplerEngine.info()` of the loaded model.
        options: limits and names.
        api_key_digests: SHA-256 digests of the API keys (`jobs.serve.auth`); empty: no key required.

    Returns:
        FastAPI app with the /v1 routes, the web page at /, error handlers and the payload limit.
    """
    app = FastAPI(
        title="MaskGIT sampler",
        version="1",
        description="Class-conditional generation and inpainting with a MaskGIT transformer + VQGAN. "
        "Concurrent requests share the sampler's forward passes; image i of a request uses seed + i, so "
        "results do not depend on what else runs. Every error answer is JSON. A web page is served at /.",
        docs_url=None,  # served below from local files: FastAPI's own page loads Swagger UI from a CDN
        redoc_url=None,
    )
    checker = _RequestChecker(info, options)
    models = deployment_models(options, info)
    classes = ClassNames(info.get("class_names"), info["num_classes"])
    size = info["image_size"]
    ImagesRequest = bounded_request_model(
        info["name"], size, options.max_images_per_request, options.max_steps, classes
    )
    app.add_middleware(PayloadLimitMiddleware, max_bytes=options.max_payload_bytes, render=_render)
    # Added last, so it runs first: a request without a key is refused before its body is read.
    app.add_middleware(ApiKeyMiddleware, digests=api_key_digests, render=_render)
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

    def _images(request, class_id: int, job: SampleJob, output: JobOutput) -> ImagesResponse:
        encoded = [openai_images.encode_as(png, request.output_format, request.output_compression)
                   for png in output.pngs]  # fmt: skip
        data = [
            ImageData(b64_json=base64.b64encode(image).decode("ascii"), revised_prompt=classes.name(class_id),
                      seed=seed)
            for image, seed in zip(encoded, job.seeds)
        ]  # fmt: skip
        return ImagesResponse(
            created=int(time.time()), data=data, output_format=request.output_format or "png",
            size=f"{size}x{size}",
        )  # fmt: skip

    async def _run_openai(job: SampleJob) -> JobOutput:
        try:
            return await _run(job)
        except RequestError as error:
            raise OpenAIError(400 if error.status == 422 else error.status, error.error) from None

    async def images_generations(request: ImagesRequest) -> ImagesResponse:
        """OpenAI-shaped generation: `prompt` is a class id or name, `n` images, `b64_json` back."""
        class_id = classes.resolve(request.prompt)
        try:
            _, job = checker.generate_job(request, [class_id] * (request.n or 1))
        except RequestError as error:
            raise OpenAIError(400 if error.status == 422 else error.status, error.error) from None
        return _images(request, class_id, job, await _run_openai(job))

    async def _form_file(form, *names: str) -> bytes | None:
        uploads = [item for name in names for item in form.getlist(name)]
        if len(uploads) > 1:
            raise OpenAIError(400, f"give one {names[0]}; this server edits one image per request",
                              param=names[0], code="invalid_value")  # fmt: skip
        if uploads and isinstance(uploads[0], str):
            raise OpenAIError(400, f"{names[0]} must be a file (multipart/form-data)", param=names[0],
                              code="invalid_value")  # fmt: skip
        return await uploads[0].read() if uploads else None

    async def images_edits(request: Request) -> ImagesResponse:
        """OpenAI-shaped editing (multipart/form-data): regenerate the transparent pixels of `mask` (or,
        without a mask, of `image`) as the class `prompt` names; `n` images, `b64_json` back."""
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise OpenAIError(400, "send the edit as multipart/form-data (image, mask, prompt, …), as "
                              "OpenAI's clients do", code="invalid_value")  # fmt: skip
        form = await request.form(max_part_size=options.max_payload_bytes)
        try:
            body = ImagesRequest.model_validate(openai_images.form_fields(form))
        except ValidationError as error:
            raise RequestValidationError(error.errors()) from None
        image = await _form_file(form, "image", "image[]")
        mask = await _form_file(form, "mask")
        if image is None:
            raise OpenAIError(400, "missing field 'image' (a file)", param="image",
                              code="missing_required_parameter")  # fmt: skip
        class_id = classes.resolve(body.prompt)
        try:
            pixels = _decode_image_bytes(image, "image", options.max_image_side, size)
        except RequestError as error:
            raise OpenAIError(400, error.error, param="image", code="invalid_value") from None
        field = "image" if mask is None else "mask"
        transparent = _transparent_pixels(image if mask is None else mask, field, size)
        try:
            region = mask_to_token_region(transparent, info["downsample_factor"])
            _, job = checker.edit_job(body, [class_id] * (body.n or 1), pixels, region)
        except ValueError as error:  # a mask with no transparent pixel
            raise OpenAIError(400, f"{field}: {error}", param=field, code="invalid_value") from None
        except RequestError as error:
            raise OpenAIError(400 if error.status == 422 else error.status, error.error) from None
        return _images(body, class_id, job, await _run_openai(job))

    openai_errors = _documented(OpenAIErrorResponse, 400, 401, 413, 500, 503)
    app.router.add_api_route(
        openai_images.ROUTE, images_generations, methods=["POST"], response_model=ImagesResponse,
        responses=openai_errors, route_class_override=OpenAIRoute,
    )  # fmt: skip
    app.router.add_api_route(
        openai_images.EDITS_ROUTE, images_edits, methods=["POST"], response_model=ImagesResponse,
        responses=openai_errors, route_class_override=OpenAIRoute,
        openapi_extra=openai_images.edit_request_body(ImagesRequest),
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

    created = int(time.time())
    card = {"id": info["name"], "object": "model", "created": created, "owned_by": "maskgit"}
    limits = {
        name: getattr(options, name)
        for name in ("max_images_per_request", "max_steps", "max_payload_bytes", "max_image_side")
    }
    details = {**info, **card, "limits": limits, "max_batch_images": options.max_batch_images}

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> dict[str, Any]:
        """OpenAI's model list: the one served model (details at /v1/models/{model_id})."""
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id}", response_model=ModelDetails, responses=_documented(ErrorResponse, 404))
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        """The served model: OpenAI's model fields, plus its sizes, configs, class names, sampling
        defaults and this server's limits."""
        if model_id != info["name"]:
            raise RequestError(404, f"model {model_id!r} is not served here; see GET /v1/models")
        return details

    page_html = (STATIC_DIR / "index.html").read_text()

    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        """The web page (jobs/serve/static/); its relative URLs resolve under the route prefix."""
        base = request.scope.get("root_path", "").rstrip("/") + "/"
        return HTMLResponse(page_html.replace('<base href="/">', f'<base href="{html.escape(base)}">'))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=SWAGGER_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        """Swagger UI from fastapi-offline's copy of its files: works without internet access."""
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            oauth2_redirect_url=None, swagger_ui_parameters={"validatorUrl": None},
        )  # fmt: skip

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            streamed = ["/v1/generate", "/v1/inpaint"]
            document = events.document_streams(FastAPI.openapi(app), streamed)
            app.openapi_schema = _document_keys(document) if api_key_digests else document
        return app.openapi_schema

    app.openapi = openapi
    return app
