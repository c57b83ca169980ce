"""The sampling service's contract: deployment options, and the HTTP request and response models.

`ServeOptions` is everything a deployment is built from (checkpoint folders, limits, batching,
replicas, GPUs); `maskgit serve` flags, the `args:` of `jobs/serve/config.yaml` and
`serve run jobs.serve.app:app_builder key=value` all end up here, so unknown or mistyped keys fail in one
place with a message that names them.

The request models forbid unknown fields and state every rule that holds for any deployment: types
(strict: no "3" for 3), knob ranges, enums, and the one-of rules (`class_ids` or `class_id`; `box` or
`mask`) both as validators and in their JSON Schema. `jobs/serve/limits.py` subclasses them with one
deployment's bounds (steps, images per request, the model's classes and size), so the OpenAPI
document states every rule the server enforces; the ingress decodes images and checks what no schema
can (a decodable image at the model's size, a mask that selects something). No request field names a
server-side path: clients send numbers and base64 images only.

Seeds: a request with seed s (drawn by the server when absent, and returned) samples its i-th image
with seed s + i, so the same request gives the same images whether or not the server batched it
with others (`transformer.sample` draws each image's noise from its own seed).
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from transformer.config import MAX_SEED  # the sampler's seed bound (JSON-safe), shared with the CLI
from weights.config_base import FrozenConfig

OutputKind = Literal["png", "tokens"]
# The sampler's names (transformer.masking / transformer.config), spelled out so the OpenAPI enums read
# as written here; tests/test_serve_schema.py checks that they match.
NamedSchedule = Literal[
    "arccos", "cosine", "linear", "square", "root", "halton", "arccos-v2",
    "jax-cosine", "jax-uniform", "jax-log", "jax-exp",
]  # fmt: skip
JaxPowSchedule = Annotated[str, StringConstraints(pattern=r"^jax-pow[0-9]{1,2}(\.[0-9]{1,2})?$")]
Order = Literal["confidence", "halton"]
CfgSchedule = Literal["linear", "constant"]
MIN_TEMPERATURE = 0.01  # logits / t stays finite in float32 (and bfloat16) above this


def _integral(value: Any) -> Any:
    """JSON Schema's integers include 3.0: accept a float with no fraction as that integer."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(**bounds: int) -> Any:
    """A JSON integer with `bounds` (ge, le, lt): 3 or 3.0, never "3", true or 3.5 (requests are
    validated strictly otherwise). Bounds go inside the type so that `integer(...) | None` keeps them
    in the JSON Schema as minimum / maximum."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]


Integer = integer()


@dataclass(frozen=True)
class ServeOptions(FrozenConfig):
    """How to build and run the service; defaults suit one CPU replica on a laptop.

    Attributes:
        transformer: our transformer checkpoint folder (or a reference `.pth`).
        tokenizer: our VQGAN folder (or a taming checkpoint).
        model_name: name shown by `GET /v1/models` (default: the transformer folder's name; never a path).
        app_name: Serve application name.
        host: HTTP bind address of the Serve proxy (127.0.0.1 keeps it local).
        port: HTTP port of the Serve proxy.
        route_prefix: URL prefix of the application.
        replicas: sampler replicas (each loads both models); ignored when `max_replicas` is set.
        min_replicas: autoscaling lower bound (used with `max_replicas`).
        max_replicas: enables autoscaling between `min_replicas` and this many replicas, targeting
            `max_batch_images` ongoing requests per replica (a full batch each).
        num_gpus: GPUs per sampler replica (fractions share a GPU); 0 runs on CPU.
        num_cpus: CPUs per sampler replica (Ray sets the replica's torch threads to this).
        device: "auto" (CUDA when the replica sees a GPU), "cpu" or "cuda".
        autocast_bf16: run the transformer and decoder under bfloat16 autocast.
        batching: "continuous" (default): requests join and leave a running decode loop at step
            boundaries, whatever their knobs, one forward pass per step holding at most
            2 × `max_batch_images` rows (a guided image takes two); "merge": Serve's `@serve.batch`
            merges requests up to `max_batch_images` images and runs one sampler call per group of
            equal knobs, each request waiting for its whole batch.
        max_batch_images: most images in one sampler call; requests are merged up to this.
        batch_wait_timeout_s: how long a partly filled batch waits for more requests ("merge").
        ingress_max_ongoing_requests: concurrent HTTP requests one ingress replica accepts.
        max_images_per_request: limit on `class_ids` / `count` (<= `max_batch_images`).
        max_steps: limit on `steps`.
        max_payload_bytes: limit on a request body (413 above it).
        max_image_side: limit on an uploaded image's sides, checked before decoding it.
        storage_options: fsspec options for model paths on object storage (each replica reads them).
        api_key_file: a file of API keys, one per line (with $MASKGIT_API_KEYS, comma-separated): every
            `/v1/` route but `/v1/health` then needs `Authorization: Bearer <key>` (jobs/serve/auth.py).
            Read where the application is built; only the keys' digests reach the replicas.
    """

    transformer: str
    tokenizer: str
    model_name: str | None = None
    app_name: str = "maskgit"
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int | None = None
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    device: str = "auto"
    autocast_bf16: bool = False
    batching: str = "continuous"
    max_batch_images: int = 32
    batch_wait_timeout_s: float = 0.01
    ingress_max_ongoing_requests: int = 256
    max_images_per_request: int = 16
    max_steps: int = 64
    max_payload_bytes: int = 8 * 2**20
    max_image_side: int = 2048
    storage_options: dict[str, Any] | None = None
    api_key_file: str | None = None
    unknown_key_label: ClassVar[str] = "serve option"

    def __post_init__(self) -> None:
        for name in ("transformer", "tokenizer"):
            if not str(getattr(self, name)):
                raise ValueError(f"ServeOptions.{name} (a checkpoint folder) is required")
        positive = (
            "port",
            "replicas",
            "min_replicas",
            "max_batch_images",
            "ingress_max_ongoing_requests",
            "max_images_per_request",
            "max_steps",
            "max_payload_bytes",
            "max_image_side",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"ServeOptions.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"ServeOptions.max_replicas ({self.max_replicas}) must be >= "
                f"min_replicas ({self.min_replicas})"
            )
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise ValueError(f"num_gpus and num_cpus must be >= 0, got {self.num_gpus}, {self.num_cpus}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"ServeOptions.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.batching not in ("continuous", "merge"):
            raise ValueError(f"ServeOptions.batching must be 'continuous' or 'merge', got {self.batching!r}")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if self.max_images_per_request > self.max_batch_images:
            # Serve rejects a single item larger than the batch (RuntimeError inside the replica).
            raise ValueError(
                f"max_images_per_request ({self.max_images_per_request}) must be <= max_batch_images "
                f"({self.max_batch_images}): one request must fit in one sampler batch"
            )
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {self.route_prefix!r}")

    @property
    def display_name(self) -> str:
        """The public model name: `model_name`, else the transformer folder's last component."""
        return self.model_name or Path(str(self.transformer).rstrip("/")).name or "maskgit"

    @property
    def sampler_max_ongoing_requests(self) -> int:
        """Requests a sampler replica accepts at once: a running batch plus a full one filling behind it.

        Serve's default (5) would silently cap `max_batch_images` (ray#43288): a batch can only hold
        requests the replica has accepted.
        """
        return 2 * self.max_batch_images

    @classmethod
    def _from_stored(cls, values: dict[str, Any]) -> dict[str, Any]:
        """YAML `args` and `serve run` key=value strings: convert strings to the field types."""
        hints = typing.get_type_hints(cls)
        return {key: _coerce(key, value, hints[key]) for key, value in values.items()}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert a (possibly string) option value to the field's type, or raise a ValueError naming it."""
    allowed = [t for t in typing.get_args(hint)] if isinstance(hint, types.UnionType) else [hint]
    if value is None and type(None) in allowed:
        return None
    target = next(t for t in allowed if t is not type(None))
    if typing.get_origin(target) is dict:  # storage_options: a mapping, or its JSON text
        try:
            value = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError as error:
            raise ValueError(f"serve option {name} is not valid JSON ({error.msg})") from None
        if not isinstance(value, dict):
            raise ValueError(f"serve option {name} must be a mapping, got {type(value).__name__}")
        return value
    if isinstance(value, str) and target is not str:
        if type(None) in allowed and value.lower() in ("", "none", "null"):
            return None
        if target is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        else:
            try:
                return target(value)
            except ValueError:
                pass
        raise ValueError(f"serve option {name}={value!r} is not a valid {target.__name__}")
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        raise ValueError(f"serve option {name} must be a {target.__name__}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------
# HTTP request and response models


class SamplingKnobs(BaseModel):
    """Decoding knobs shared by every sampling request; absent (or null) knobs take the model's stored
    defaults. See docs/reference.md#sampler for what each one does."""

    model_config = ConfigDict(extra="forbid", strict=True)

    steps: integer(ge=1) | None = Field(None, description="decoding steps T (at most the server's max_steps)")
    schedule: NamedSchedule | JaxPowSchedule | None = Field(
        None,
        description="how many tokens each step reveals, with any order: a masking schedule ('halton' and "
        "'arccos-v2' are the v2 samplers' tables; jax-pow<K>: K with up to two digits and two decimals)",
    )
    temperature: float | None = Field(
        None, ge=MIN_TEMPERATURE, le=100, allow_inf_nan=False, description="logits are divided by it"
    )
    gumbel_temperature: float | None = Field(
        None, ge=0, le=100, allow_inf_nan=False, description="Gumbel noise scale at the first step"
    )
    cfg_weight: float | None = Field(None, ge=0, le=100, allow_inf_nan=False, description="CFG weight")
    cfg_schedule: CfgSchedule | None = Field(None, description="guidance weight ramp")
    order: Order | None = Field(
        None,
        description="which masked tokens a step reveals, with any schedule: 'confidence' (v1) or "
        "'halton' (v2's order)",
    )
    seed: integer(ge=0, lt=MAX_SEED) | None = Field(
        None, description="image i uses seed + i; drawn and returned when absent"
    )


class SamplingFields(SamplingKnobs):
    """The knobs plus what `/v1/generate` and `/v1/inpaint` answer with."""

    output: OutputKind = Field("png", description="'png' (base64 PNG images) or 'tokens' (code grids)")
    stream: bool = Field(
        False,
        description="answer text/event-stream: one 'step' event per decoding step, then 'result' "
        "(the JSON answer) or 'error'",
    )
    previews: Literal["tokens", "images"] = Field(
        "tokens",
        description="what a streamed 'step' event carries: the token grid and its mask ('tokens'), or "
        "also a PNG of it decoded ('images', one decoder pass per step)",
    )


_NULL = {"type": "null"}  # in a one-of branch: absent or null


def classes_one_of(schema: dict[str, Any]) -> None:
    """`class_ids` (a list, without `count`) or `class_id` (with an optional `count`), never both."""
    schema["oneOf"] = [
        {
            "required": ["class_ids"],
            "properties": {"class_ids": {"type": "array"}, "class_id": _NULL, "count": _NULL},
        },
        {"required": ["class_id"], "properties": {"class_id": {"type": "integer"}, "class_ids": _NULL}},
    ]


def region_one_of(schema: dict[str, Any]) -> None:
    """`box` (with an optional `margin`) or `mask` (without `margin`), never both."""
    schema["oneOf"] = [
        {"required": ["box"], "properties": {"box": {"type": "object"}, "mask": _NULL}},
        {
            "required": ["mask"],
            "properties": {"mask": {"type": "string"}, "box": _NULL},
            "not": {"required": ["margin"]},
        },
    ]


IMAGE_FORMAT = "image-base64"  # OpenAPI string format of uploaded images (base64 or a data: URL)


class GenerateRequest(SamplingFields):
    """`POST /v1/generate`: class-conditional images, given as `class_ids` or as `class_id` + `count`."""

    model_config = ConfigDict(json_schema_extra=classes_one_of)

    class_ids: list[Integer] | None = Field(None, min_length=1, description="one class per image (no count)")
    class_id: Integer | None = Field(None, description="the class of every image (with count)")
    count: integer(ge=1) | None = Field(None, description="images of class_id (default 1)")

    @model_validator(mode="after")
    def _one_way_to_name_classes(self) -> GenerateRequest:
        if self.class_ids is None and self.class_id is None:
            raise ValueError("no classes: give class_ids (a list) or class_id (with an optional count)")
        if self.class_ids is not None and self.class_id is not None:
            raise ValueError("give either class_ids or class_id, not both")
        if self.class_ids is not None and self.count is not None:
            raise ValueError("count goes with class_id; with class_ids the list length is the count")
        return self

    def requested_class_ids(self) -> list[int]:
        """The class of each requested image, in order."""
        if self.class_ids is not None:
            return list(self.class_ids)
        return [int(self.class_id)] * (self.count or 1)


class PixelBox(BaseModel):
    """A box in image pixels (end-exclusive: rows top … top + height − 1); the part past the image's
    border is ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)

    top: Integer = Field(ge=0)
    left: Integer = Field(ge=0)
    height: Integer = Field(ge=1)
    width: Integer = Field(ge=1)


class InpaintRequest(SamplingFields):
    """`POST /v1/inpaint`: regenerate a box or a mask of an image for a class, blended at the border."""

    model_config = ConfigDict(json_schema_extra=region_one_of)

    image: str = Field(
        json_schema_extra={"format": IMAGE_FORMAT},
        description="base64 (or a data: URL) of an encoded image (PNG, JPEG, WebP …) at the model's size",
    )
    box: PixelBox | None = Field(None, description="pixel box to regenerate (or give mask)")
    margin: Integer = Field(
        1, ge=0, le=64, description="tokens added around the box (JAX demo and `maskgit sample`: 1)"
    )
    mask: str | None = Field(
        None,
        json_schema_extra={"format": IMAGE_FORMAT},
        description="base64 image at the model's size; pixels lighter than 127 are regenerated (at "
        "least one must be); no margin",
    )
    class_id: Integer = Field(description="class to condition the regenerated region on")
    count: Integer = Field(1, ge=1, description="variations to return (seeds seed … seed + count − 1)")

    @model_validator(mode="after")
    def _one_region(self) -> InpaintRequest:
        if self.box is None and self.mask is None:
            raise ValueError("no region: give box (pixels) or mask (an image) to say what to regenerate")
        if self.box is not None and self.mask is not None:
            raise ValueError("give either box or mask (the region to regenerate), not both")
        if self.mask is not None and "margin" in self.model_fields_set:
            raise ValueError("margin applies to a box; a mask is used as given")
        return self


class SampledImage(BaseModel):
    """One image of a response, in request order."""

    index: int
    class_id: int
    seed: int
    png: str | None = Field(None, description="base64 PNG (output='png')")
    tokens: list[list[int]] | None = Field(None, description="h×w code grid (output='tokens')")


class SampleResponse(BaseModel):
    """Answer to generate and inpaint requests."""

    model: str
    seed: int = Field(description="the request's base seed (image i used seed + i)")
    sampling: dict[str, Any] = Field(description="the knobs used, defaults filled in")
    images: list[SampledImage]
    batch_images: int = Field(description="images in the sampler call that produced this response")


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer."""

    error: str = Field(description="what is wrong, in one line")
    details: list[str] = Field(default_factory=list, description="one line per problem")


class HealthResponse(BaseModel):
    """Answer of `GET /v1/health` (200 ready, 503 not)."""

    status: Literal["ok", "unavailable"]
    model: str


class ModelCard(BaseModel):
    """One model in OpenAI's shape."""

    id: str = Field(description="the served model's name (the `model` of OpenAI-shaped requests)")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the server started serving it")
    owned_by: str


class ModelList(BaseModel):
    """Answer of `GET /v1/models`, OpenAI's list shape: the one served model."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModelDetails(ModelCard):
    """Answer of `GET /v1/models/{model_id}`: OpenAI's model fields plus the loaded model's sizes,
    configs, class names, sampling defaults (`sampling_defaults`) and this server's limits (`limits`,
    `max_batch_images`)."""

    model_config = ConfigDict(extra="allow")

    name: str
    image_size: int
    num_classes: int
    class_names: list[str] | None = None
    sampling_defaults: dict[str, Any]
    limits: dict[str, int]
    max_batch_images: int
