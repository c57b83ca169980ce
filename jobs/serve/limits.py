"""Request models with one deployment's limits, so the OpenAPI document states every rule enforced.

`jobs/serve/schema.py` holds the rules that hold for any deployment (types, one-of rules, knob
ranges). A running service knows more: its `ServeOptions` limits (`max_steps`,
`max_images_per_request`, `max_payload_bytes`) and the loaded model (number of classes, image size,
the stored decoding order). `deployment_models(options, info)` subclasses the request models with
those bounds as field constraints, so one definition both validates requests and documents them
(`GET /openapi.json`), and a request the document calls valid is one the server accepts.

Rules JSON Schema cannot compute (a decodable image at the model's size, a mask that selects a
pixel) are in the field descriptions and behind a string `format` (`IMAGE_FORMAT`).
"""

# No `from __future__ import annotations`: the models below are built inside a function and pydantic
# must see their annotations as objects.

from typing import Any, NamedTuple

from pydantic import ConfigDict, Field

from jobs.serve import schema
from jobs.serve.schema import (
    IMAGE_FORMAT,
    MAX_SEED,
    Integer,
    ServeOptions,
    classes_one_of,
    integer,
    region_one_of,
)


class DeploymentModels(NamedTuple):
    """The request models of one deployment (FastAPI validates bodies with these)."""

    generate: type[schema.GenerateRequest]
    inpaint: type[schema.InpaintRequest]
    box: type[schema.PixelBox]


def whole_token_rule(size: int, factor: int) -> dict[str, Any]:
    """JSON Schema: with margin 0 a box must hold a whole token after clipping (the token box of
    `generation.box_to_token_region` rounds the box's size down to whole tokens)."""
    whole = {"top": {"maximum": size - factor}, "left": {"maximum": size - factor}}
    whole |= {"height": {"minimum": factor}, "width": {"minimum": factor}}
    box = {"anyOf": [{"type": "null"}, {"type": "object", "properties": whole}]}
    return {"if": {"properties": {"margin": {"const": 0}}, "required": ["margin"]},
            "then": {"properties": {"box": box}}}  # fmt: skip


def _extra(*rules):
    """A json_schema_extra callable applying each rule (a callable or a dict merged in `allOf`)."""

    def apply(schema: dict[str, Any]) -> None:
        for rule in rules:
            if callable(rule):
                rule(schema)
            else:
                schema.setdefault("allOf", []).append(rule)

    return apply


def deployment_models(options: ServeOptions, info: dict[str, Any]) -> DeploymentModels:
    """Request models bounded by `options` and the loaded model's `info` (`SamplerEngine.info()`).

    Args:
        options: the deployment's limits.
        info: num_classes, image_size and sampling_defaults of the loaded model.
    """
    classes, size = int(info["num_classes"]), int(info["image_size"])
    most = options.max_images_per_request
    whole_token = whole_token_rule(size, int(info["downsample_factor"]))
    ClassId = integer(ge=0, lt=classes)
    class_text = f"class id in [0, {classes})"
    Steps = integer(ge=1, le=options.max_steps)
    steps_field = Field(None, description="decoding steps T")
    body = options.max_payload_bytes  # 413 above it, before the body is read

    class GenerateRequest(schema.GenerateRequest):
        model_config = ConfigDict(json_schema_extra=_extra(classes_one_of))

        steps: Steps | None = steps_field
        class_ids: list[ClassId] | None = Field(
            None, min_length=1, max_length=most, description=f"one {class_text} per image (no count)"
        )
        class_id: ClassId | None = Field(None, description=f"the {class_text} of every image (with count)")
        count: integer(ge=1, le=most) | None = Field(None, description="images of class_id (default 1)")

    class PixelBox(schema.PixelBox):
        top: Integer = Field(ge=0, le=size - 1)
        left: Integer = Field(ge=0, le=size - 1)
        height: Integer = Field(ge=1, le=size)
        width: Integer = Field(ge=1, le=size)

    class InpaintRequest(schema.InpaintRequest):
        model_config = ConfigDict(json_schema_extra=_extra(region_one_of, whole_token))

        steps: Steps | None = steps_field
        image: str = Field(
            min_length=1, json_schema_extra={"format": IMAGE_FORMAT},
            description=f"base64 (or a data: URL) of a {size}×{size} image (PNG, JPEG, WebP …); the whole "
            f"body is at most {body} bytes",
        )  # fmt: skip
        box: PixelBox | None = Field(None, description="pixel box to regenerate (or give mask)")
        mask: str | None = Field(
            None, min_length=1, json_schema_extra={"format": IMAGE_FORMAT},
            description=f"base64 {size}×{size} image; pixels lighter than 127 are regenerated (at least "
            "one must be); no margin",
        )  # fmt: skip
        class_id: ClassId = Field(description=f"{class_text} the regenerated region is conditioned on")
        count: Integer = Field(
            1, ge=1, le=most, description="variations to return (seeds seed … seed + count − 1)"
        )

    for model in (GenerateRequest, InpaintRequest, PixelBox):
        model.model_rebuild(force=True)
    assert most < MAX_SEED  # seed + i stays in range for every image of a request
    return DeploymentModels(GenerateRequest, InpaintRequest, PixelBox)
