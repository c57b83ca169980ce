"""The command line's shared pieces: flags every command spells the same way, and one way to turn
parsed flags into a command's frozen options dataclass.

Every command declares its flags by hand in `register(subparsers)`, each with `dest` equal to a field
name of its options dataclass; `options_from_args(Options, args)` builds the dataclass from them, and
the command's typed `run_<command>(options)` does the work (the quickstart calls the same function).

`--storage-options`: fsspec options for object storage. Credentials belong in the standard AWS
environment (or an instance profile), not on a command line; this flag is for the rest (endpoint,
region, retry settings). `@file.json` reads the JSON from a file.

`--ray-address` (alias `--address`): the Ray cluster to join; see `jobs.ray_session` for the policy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any, TypeVar

OptionsT = TypeVar("OptionsT")

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



def add_ray_address_argument(parser: argparse.ArgumentParser) -> None:
    """`--ray-address` (alias `--address`) as every Ray command takes it; dest `ray_address`."""
    parser.add_argument(
        "--ray-address",
        "--address",
        dest="ray_address",
        default=None,
        help="Ray cluster to join ('auto': the one running on this node); default $RAY_ADDRESS, "
        "else a local Ray",
    )


def options_from_args(
    cls: type[OptionsT], args: argparse.Namespace, *, prefix: str = "", **values: Any
) -> OptionsT:
    """Build the frozen dataclass `cls` from parsed flags whose `dest` is one of its field names.

    `--storage-options` text becomes its dict here (`parse_storage_options`); `values` are fields
    worked out from other flags, and override what the namespace holds. Fields without a flag keep
    their defaults. `prefix` reads a nested dataclass from dests `<prefix><field>` (the training
    job's optimizer flags have dests `optimizer_lr`, `optimizer_schedule`, ...).

    Raises:
        ValueError: bad `--storage-options`, or a value the dataclass rejects.
    """
    parsed = vars(args)
    fields = {
        field.name: parsed[prefix + field.name]
        for field in dataclasses.fields(cls)
        if prefix + field.name in parsed
    }
    if isinstance(fields.get("storage_options"), str):
        fields["storage_options"] = parse_storage_options(fields["storage_options"])
    fields.update(values)
    return cls(**fields)


def prefixed_values(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """{name: value} of the flags given with dest `<prefix><name>` (None = not given, left out)."""
    return {
        name.removeprefix(prefix): value
        for name, value in vars(args).items()
        if name.startswith(prefix) and value is not None
    }

# --- sampling knobs: one declaration, the same flag names in every command ---------------------------

SAMPLING_HELP = {
    "steps": "decoding steps T (forward passes)",
    "schedule": "how many tokens each step reveals: arccos, cosine, linear, square, root, halton, arccos-v2, "
    "jax-cosine, ... (any order)",
    "temperature": "divides the logits (the reference's sm_temp s is temperature 1/s)",
    "gumbel_temperature": "Gumbel noise scale on confidences at the first step (decays to 0)",
    "cfg_weight": "classifier-free guidance weight (0: conditional only)",
    "cfg_schedule": "guidance over the steps: linear (0 -> w, v1 reference) or constant (v2 reference)",
    "order": "which tokens a step reveals: confidence (v1) or halton (v2's low-discrepancy order)",
    "randomize_order": "halton order: roll each image's permutation by an offset drawn from its seed",
    "temperature_end": "ramp the temperature linearly to this value over the steps (v2)",
    "temperature_warmup": "double the temperature during the first N steps (v2)",
    "top_k": "sample among the k most probable codes (0: all)",
}
_SAMPLING_TYPES = {"steps": int, "schedule": str, "cfg_schedule": str, "order": str,
                   "temperature_warmup": int, "top_k": int}  # fmt: skip


def add_sampling_arguments(
    parser: argparse.ArgumentParser,
    *,
    title: str | None = None,
    aliases: dict[str, str] | None = None,
    dest_prefix: str = "",
) -> None:
    """The sampling knobs as every command takes them; each defaults to None = "not given", so
    `generation.resolve_sampling` falls back to the settings stored with the transformer.

    Flags: --sample-steps, then `--<knob>` for every other `SamplingConfig` field (--schedule,
    --temperature, --gumbel-temperature, --cfg-weight, --cfg-schedule, --order, --randomize-order /
    --no-randomize-order, --temperature-end, --temperature-warmup, --top-k). `aliases` adds an older
    spelling where it is unambiguous (`{"steps": "--steps"}` for `sample` and `evaluate`; `train`
    uses --steps for optimizer steps). `dest_prefix` keeps the dests apart from a command's own
    fields of the same name (`train` has `steps` and `schedule` of its own: it uses "sampling_").
    """
    group = parser.add_argument_group(title or "sampling (default: the settings stored with the transformer)")
    aliases = aliases or {}
    for knob, text in SAMPLING_HELP.items():
        names = ["--sample-steps" if knob == "steps" else "--" + knob.replace("_", "-")]
        if knob in aliases:
            names.append(aliases[knob])
        kind = (
            {"action": argparse.BooleanOptionalAction}
            if knob == "randomize_order"
            else {"type": _SAMPLING_TYPES.get(knob, float)}
        )
        group.add_argument(*names, dest=dest_prefix + knob, default=None, help=text, **kind)


def seed_argument(text: str) -> int:
    """argparse type of a `--seed`: an integer in [0, MAX_SEED), the bound `sample()` and the HTTP API use."""
    from transformer.config import check_seed  # lazy: parsing flags needs no torch

    try:
        return check_seed(int(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def sampling_overrides(args: argparse.Namespace, *, dest_prefix: str = "") -> dict[str, Any]:
    """{knob: value or None} from a namespace parsed with `add_sampling_arguments(..., dest_prefix)`."""
    return {knob: vars(args)[dest_prefix + knob] for knob in SAMPLING_HELP}
