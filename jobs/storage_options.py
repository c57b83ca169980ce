"""`--storage-options`: fsspec options for object storage, parsed the same way by every job.

Credentials belong in the standard AWS environment (or an instance profile), not on a command line;
this flag is for the rest (endpoint, region, retry settings). `@file.json` reads the JSON from a file.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

ENVIRONMENT_VARIABLE = "MASKGIT_STORAGE_OPTIONS"


def add_storage_options_argument(parser: argparse.ArgumentParser) -> None:
    """`--storage-options` as every job takes it: raw text, parsed by `parse_storage_options` after
    argparse (so a bad value gets that function's message), defaulting to $MASKGIT_STORAGE_OPTIONS."""
    parser.add_argument(
        "--storage-options",
        default=os.environ.get(ENVIRONMENT_VARIABLE),
        help=f"fsspec options as JSON or @file.json: endpoint, retries (default ${ENVIRONMENT_VARIABLE}); "
        "keep credentials in the AWS environment",
    )


def parse_storage_options(text: str | None) -> dict[str, Any] | None:
    """`--storage-options` JSON (or @file) -> dict, None when not given.

    Raises:
        ValueError: not valid JSON, or not a JSON object.
    """
    if not text:
        return None
    if text.startswith("@"):
        with open(text[1:]) as handle:
            text = handle.read()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--storage-options is not valid JSON ({error.msg} at {error.pos})") from None
    if not isinstance(value, dict):
        raise ValueError("--storage-options must be a JSON object")
    return value
