"""OpenAI's Images API over the same sampler: `POST /v1/images/generations` and `POST /v1/images/edits`.

Clients written for OpenAI's Images API (`client.images.generate(...)`, `client.images.edit(...)`)
can call the service: the `prompt` names the class, as a class id ("207") or a class name stored with
the model ("golden retriever", matched without regard to ASCII letter case), `n` is the number of
images, `size` is the model's ("32x32") or "auto", and images come back as `b64_json` (`url` is not
supported). `output_format` ("png", "webp", "jpeg") and `output_compression` (0-100, webp and jpeg)
are honoured. OpenAI's `quality`, `style`, `background`, `moderation` and `user` are accepted and
ignored: a class-conditional MaskGIT has no such knobs. Our decoding knobs (`steps`, `temperature`,
`cfg_weight`, …) and `seed` are accepted as extra fields (form fields on the edits route).

`/v1/images/edits` takes OpenAI's multipart form: `image` (at the model's size), an optional `mask`
(a PNG with an alpha channel: transparent pixels, alpha below 128, are regenerated; without a mask
the image's own alpha channel is used), `prompt` (the class of the regenerated region). It runs the
same inpainting as `/v1/inpaint` with a mask. Image variations are not supported.

Every error answer under `/v1/images/` (404 and 405 included) uses OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, with status 400 for any invalid request (401 a
missing or wrong API key, 413 a body over the limit); `param` names the field at fault or is null.
Our own routes keep `ErrorResponse`.
"""

# No `from __future__ import annotations`: a model below is built inside a function.

import contextlib
import difflib
import io
import json
import re
import string
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.serve.errors import RequestError, describe_validation_errors
from jobs.serve.schema import SamplingKnobs, integer

ROUTE = "/v1/images/generations"
EDITS_ROUTE = "/v1/images/edits"
PREFIX = "/v1/images"  # every answer under it uses OpenAI's error shape
OutputFormat = Literal["png", "webp", "jpeg"]
# Multipart form fields are text: these are read as JSON numbers before validation.
NUMERIC_FORM_FIELDS = frozenset(
    {"n", "output_compression", "steps", "temperature", "gumbel_temperature", "cfg_weight", "seed"}
)
_SPACE = " \t\n\r"  # stripped around a prompt (and allowed by its pattern)
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold_case(text: str) -> str:
    """ASCII letters to lower case; every other character as is (what the prompt pattern can state)."""
    return text.translate(_ASCII_LOWER)


class OpenAIError(Exception):
    """A refused request on the OpenAI-shaped route."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error (4xx) or server_error (5xx)")
    param: str | None = Field(description="the request field at fault, when there is one")
    code: str | None = Field(description="e.g. invalid_value, unsupported_value, model_not_found")


class OpenAIErrorResponse(BaseModel):
    """Body of every error answer of the OpenAI-shaped route."""

    error: OpenAIErrorDetail


class ImageGenerationRequest(SamplingKnobs):
    """`POST /v1/images/generations`: `n` images of the class named by `prompt`."""

    model: str | None = Field(None, description="the served model's name (GET /v1/models); absent: it")
    prompt: str = Field(description="a class id ('7') or a class name, ASCII case ignored")
    n: integer(ge=1) | None = Field(None, description="number of images (default 1)")
    size: str | None = Field(None, description="'WxH', the model's size, or 'auto'; absent: it")
    response_format: Literal["b64_json"] | None = Field(
        None, description="only 'b64_json' ('url' is not supported)"
    )
    output_format: OutputFormat | None = Field(None, description="'png' (default), 'webp' or 'jpeg'")
    output_compression: integer(ge=0, le=100) | None = Field(
        None, description="webp and jpeg quality, 0-100 (default 100); ignored for png"
    )
    user: str | None = Field(None, description="accepted for compatibility and ignored")
    quality: str | None = Field(None, description="accepted for compatibility and ignored")
    style: str | None = Field(None, description="accepted for compatibility and ignored")
    background: str | None = Field(None, description="accepted for compatibility and ignored")
    moderation: str | None = Field(None, description="accepted for compatibility and ignored")
    input_fidelity: str | None = Field(None, description="(edits) accepted for compatibility and ignored")


class ImageData(BaseModel):
    b64_json: str = Field(description="base64 image (PNG unless output_format says otherwise)")
    revised_prompt: str | None = Field(None, description="the class the image was generated for")
    seed: int = Field(description="the image's seed")


class ImagesResponse(BaseModel):
    """Answer of `POST /v1/images/generations` and `POST /v1/images/edits`."""

    created: int = Field(description="Unix time of the answer")
    data: list[ImageData]
    output_format: OutputFormat = Field("png", description="the format of every image")
    size: str = Field(description="'WxH' of every image")


def encode_as(png: bytes, output_format: str | None, compression: int | None) -> bytes:
    """A PNG re-encoded as `output_format` (None or "png": unchanged; webp and jpeg at `compression`)."""
    if output_format in (None, "png"):
        return png
    with Image.open(io.BytesIO(png)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=output_format.upper(), quality=100 if compression is None
                                  else compression)  # fmt: skip
    return buffer.getvalue()


def form_fields(form: Any) -> dict[str, Any]:
    """The text fields of a multipart form as a request body: numbers read as JSON, the rest as text."""
    body: dict[str, Any] = {}
    for name, value in form.multi_items():
        if not isinstance(value, str) or name in ("image", "image[]", "mask"):
            continue
        if name in NUMERIC_FORM_FIELDS:
            with contextlib.suppress(ValueError):  # not a number: validation names the field
                value = json.loads(value)
        body[name] = value
    return body


class ClassNames:
    """Turns a prompt into a class id: an id as decimal text, or a stored name (ASCII case folded).

    Args:
        names: one name per class (None when the model stores none: ids only).
        num_classes: number of classes.
    """

    def __init__(self, names: Sequence[str] | None, num_classes: int):
        self.names = list(names) if names else None
        self.num_classes = num_classes
        self._by_name: dict[str, int] = {}
        for index, name in enumerate(self.names or []):
            self._by_name.setdefault(fold_case(name), index)  # a name two classes share: the first

    def name(self, class_id: int) -> str:
        return self.names[class_id] if self.names else f"class {class_id}"

    def resolve(self, prompt: str) -> int:
        """The class id `prompt` names.

        Raises:
            OpenAIError: 400 naming a few valid prompts when it names none.
        """
        text = prompt.strip(_SPACE)
        if text in {str(i) for i in range(self.num_classes)}:  # "7", never "07" or "+7"
            return int(text)
        if fold_case(text) in self._by_name:
            return self._by_name[fold_case(text)]
        shown = text if len(text) <= 40 else text[:37] + "..."
        close = difflib.get_close_matches(fold_case(text), list(self._by_name), n=3, cutoff=0.6)
        guesses = " or ".join(repr(self.names[self._by_name[c]]) for c in close)
        guess = f"; did you mean {guesses}?" if close else "."
        examples = ", ".join(repr(name) for name in (self.names or [])[:5])
        valid = f"a class name ({examples}, … see GET /v1/models) or " if self.names else ""
        raise OpenAIError(
            400,
            f"prompt {shown!r} names no class of this model{guess} Give {valid}a class id "
            f"0–{self.num_classes - 1}",
            param="prompt",
            code="invalid_value",
        )

    def pattern(self) -> str:
        """A regular expression (ECMA 262 and Python alike) matching exactly the prompts `resolve` accepts."""
        options = [str(i) for i in range(self.num_classes)]
        options += ["".join(_char_pattern(char) for char in name) for name in self.names or []]
        space = "[ \\t\\n\\r]*"
        return f"^{space}(?:{'|'.join(options)}){space}$"


def _char_pattern(char: str) -> str:
    if char in string.ascii_letters:
        return f"[{char.lower()}{char.upper()}]"
    if char.isascii() and not char.isalnum():
        return f"\\x{ord(char):02x}"  # punctuation and spaces, never a regex metacharacter
    return re.escape(char) if char.isascii() else char


def bounded_request_model(
    model_name: str,
    image_size: int,
    max_images: int,
    max_steps: int,
    classes: ClassNames,
    rules: Sequence[dict[str, Any]] = (),
) -> type[ImageGenerationRequest]:
    """`ImageGenerationRequest` with this deployment's model name, size, limits and prompt pattern.

    The prompt pattern is documentation (`ClassNames.resolve` decides, with a better message); every
    other bound is a field constraint, so validation and the document agree. `rules` are JSON Schema
    rules across fields (the server enforces them elsewhere), added under `allOf`.
    """
    ModelName = Literal[model_name]  # type: ignore[valid-type]
    Size = Literal[f"{image_size}x{image_size}", "auto"]  # type: ignore[valid-type]
    prompt_schema = {"pattern": classes.pattern()}

    class ImageGenerationRequest(_Base):
        model_config = ConfigDict(
            title="ImageGenerationRequest", json_schema_extra={"allOf": list(rules)} if rules else None
        )

        model: ModelName | None = Field(None, description="the served model's name; absent: it")
        prompt: str = Field(
            json_schema_extra=prompt_schema,
            description="a class id (decimal, as '7') or a class name stored with the model (ASCII case "
            "ignored; GET /v1/models lists class_names), spaces around it ignored",
        )
        n: integer(ge=1, le=max_images) | None = Field(None, description="number of images (default 1)")
        size: Size | None = Field(None, description="the model's size 'WxH' or 'auto'; absent: it")
        steps: integer(ge=1, le=max_steps) | None = Field(None, description="decoding steps T")

    ImageGenerationRequest.model_rebuild(force=True)
    return ImageGenerationRequest


_Base = ImageGenerationRequest


def edit_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `requestBody` of `POST /v1/images/edits`: `model`'s fields as multipart form fields, plus
    the `image` and `mask` files (the route reads the form itself)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # the fields are scalars; nothing refers to a definition
    schema.pop("allOf", None)
    schema["title"] = "ImageEditRequest"
    files = {
        "image": {"type": "string", "format": "binary", "description": "the image to edit, at the model's "
                  "size; its transparent pixels are regenerated when no mask is given"},
        "mask": {"type": "string", "format": "binary", "description": "a PNG at the model's size with an "
                 "alpha channel: pixels with alpha below 128 are regenerated"},
    }  # fmt: skip
    schema["properties"] = {**files, **schema["properties"]}
    schema["required"] = ["image", *schema.get("required", [])]
    schema["properties"]["prompt"]["description"] = "the class of the regenerated region: a class id or name"
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def validation_error(errors: list[dict[str, Any]], lines: list[str], status: int) -> OpenAIError:
    """FastAPI's validation errors on this route as one OpenAI-shaped error."""
    first = errors[0] if errors else {}
    # A field name, never a character offset of malformed JSON or a list index.
    names = [part for part in first.get("loc", ()) if isinstance(part, str) and part != "body"]
    param = None if first.get("type") == "json_invalid" else ".".join(names) or None
    code = "invalid_value"
    if param == "response_format" and first.get("input") == "url":
        message = "response_format 'url' is not supported: this server returns images inline; use 'b64_json'"
        return OpenAIError(400, message, param=param, code="unsupported_value")
    if param == "model" and first.get("type") == "literal_error":
        code = "model_not_found"
    elif first.get("type") == "missing":
        code = "missing_required_parameter"
    return OpenAIError(400, "; ".join(lines), param=param, code=code)


class OpenAIRoute(APIRoute):
    """A route answering every refusal in OpenAI's error shape (validation errors included)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as error:
                errors = list(error.errors())
                status, lines, _ = describe_validation_errors(errors)
                refused = validation_error(errors, lines, status)
            except OpenAIError as error:
                refused = error
            except RequestError as error:
                refused = OpenAIError(400 if error.status == 422 else error.status, error.error)
            except StarletteHTTPException as error:  # FastAPI's own 400 for a body it cannot read
                refused = OpenAIError(error.status_code, f"the body could not be read: {error.detail}")
            return JSONResponse(refused.body(), status_code=refused.status)

        return run
