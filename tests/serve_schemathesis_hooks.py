"""Schemathesis hooks for the Serve conformance test (loaded by `st run` through SCHEMATHESIS_HOOKS).

The OpenAPI document marks uploaded images with the string format "image-base64" (a decodable image
at the model's size); this teaches schemathesis to generate such values: random RGB PNGs of
$MASKGIT_TEST_IMAGE_SIZE pixels, some with light pixels everywhere so a mask selects something.
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

SIZE = int(os.environ.get("MASKGIT_TEST_IMAGE_SIZE", "32"))


def _png(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    pixels[0, 0] = 255  # at least one light pixel: a mask made of it selects a token
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


schemathesis.openapi.format("image-base64", st.integers(0, 2**32 - 1).map(_png))
