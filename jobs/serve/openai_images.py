"""An OpenAI-shaped image endpoint: `POST /v1/images/generations` over the same sampler.

Clients written for OpenAI's Images API (`client.images.generate(...)`) can call the service: the
`prompt` names the class, as a class id ("207") or a class name stored with the model ("golden
retriever", matched without regard to ASCII letter case), `n` is the number of images, `size` must be
the model's ("32x32"), and images come back as `b64_json` (`url` is not supported). Our decoding
knobs (`steps`, `temperature`, `cfg_weight`, …) and `seed` are accepted as extra fields.

Errors on this route use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with
status 400 for any invalid request (413 for a body over the limit); our own routes keep
`ErrorResponse`.
"""

# No `from __future__ import annotations`: a model below is built inside a function.

import difflib
import re
import string
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.serve.errors import RequestError, describe_validation_errors
from jobs.serve.schema import SamplingKnobs, integer

ROUTE = "/v1/images/generations"
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
    size: str | None = Field(None, description="'WxH', the model's size; absent: it")
    response_format: Literal["b64_json"] | None = Field(
        None, description="only 'b64_json' ('url' is not supported)"
    )
    user: str | None = Field(None, description="accepted for compatibility and ignored")


class ImageData(BaseModel):
    b64_json: str = Field(description="base64 PNG")
    revised_prompt: str | None = Field(None, description="the class the image was generated for")
    seed: int = Field(description="the image's seed")


class ImagesResponse(BaseModel):
    """Answer of `POST /v1/images/generations`."""

    created: int = Field(description="Unix time of the answer")
    data: list[ImageData]


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
    Size = Literal[f"{image_size}x{image_size}"]  # type: ignore[valid-type]
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
        size: Size | None = Field(None, description="the model's size 'WxH'; absent: it")
        steps: integer(ge=1, le=max_steps) | None = Field(None, description="decoding steps T")

    ImageGenerationRequest.model_rebuild(force=True)
    return ImageGenerationRequest


_Base = ImageGenerationRequest


def validation_error(errors: list[dict[str, Any]], lines: list[str], status: int) -> OpenAIError:
    """FastAPI's validation errors on this route as one OpenAI-shaped error."""
    first = errors[0] if errors else {}
    param = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
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
