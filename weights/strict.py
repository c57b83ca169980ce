"""Strict state-dict loading and unwrapping of training wrappers, shared by every model we save.

Loading is strict everywhere (docs/architecture.md, "Weights"): a missing, unexpected or mis-shaped
key is an error that names it, instead of `load_state_dict(strict=False)` silently leaving random
weights behind. Wrapped models (DDP and DeepSpeed engines keep the model in `.module`,
`torch.compile` in `._orig_mod`) are unwrapped before saving, so nothing downstream sees a wrapper's
key prefixes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

# How many keys of each kind an error message lists before "... and N more".
SHOWN_KEYS = 10
# Key prefixes of wrapped models: DDP / DeepSpeed engines (`.module`), torch.compile (`._orig_mod`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Wrappers nest at most a few deep (DeepSpeed engine around a compiled module); a cycle must not hang.
_MAX_WRAPPER_DEPTH = 8


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DeepSpeed (`.module`) and torch.compile (`._orig_mod`) wrappers.

    Args:
        model: a module, possibly wrapped (several times).

    Returns:
        the innermost module; `model` itself when it is not wrapped.
    """
    for _ in range(_MAX_WRAPPER_DEPTH):
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module) or inner is model:
            return model
        model = inner
    return model


def strip_wrapper_prefixes(
    state_dict: Mapping[str, Any], *, anywhere: bool = False, source: str = "state dict"
) -> dict[str, Any]:
    """`state_dict` with the wrapper prefixes (`module.`, `_orig_mod.`) taken out of its keys.

    Args:
        state_dict: tensors by key, as a wrapped model saved them.
        anywhere: False (the v1 and LlamaGen readers): each prefix is removed from the start of the
            keys only when every key carries it. True (the v2 reference's own loader): every
            occurrence of each prefix is removed from every key, wherever it stands.
        source: what the tensors come from, for the message.

    Raises:
        ValueError: (`anywhere`) two keys become the same once the prefixes are removed.
    """
    if not anywhere:
        stripped = dict(state_dict)
        for prefix in WRAPPER_PREFIXES:
            if stripped and all(key.startswith(prefix) for key in stripped):
                stripped = {key[len(prefix) :]: value for key, value in stripped.items()}
        return stripped
    renamed: dict[str, Any] = {}
    for key, value in state_dict.items():
        name = key
        for prefix in WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        if name in renamed:
            raise ValueError(f"{source}: two entries become {name!r} once wrapper prefixes are removed")
        renamed[name] = value
    return renamed


def read_torch_file(path: str | Path, *, allowed: Iterable[type] = ()) -> Any:
    """What `torch.save` wrote to `path`, read with `weights_only=True` (no pickled code runs).

    The file is memory-mapped where its serialisation allows it, so entries a reader never touches
    (an optimizer's moments beside the weights) are never read into memory.

    Args:
        path: the file.
        allowed: further classes the file may hold, rebuilt as inert data (e.g. `argparse.Namespace`).

    Raises:
        ValueError: the file cannot be read weights-only (corrupt, or it pickles other code).
    """
    unreadable = f"{path}: cannot be read as a weights-only torch checkpoint"
    with torch.serialization.safe_globals(list(allowed)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            pass  # legacy (non-zip) serialization cannot be memory-mapped
        except Exception as error:  # torch raises several types for corrupt / pickled-code files
            raise ValueError(f"{unreadable} ({error})") from error
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{unreadable} ({error})") from error


def layout_of(build: Callable[[Any], nn.Module], config: Any) -> dict[str, tuple[int, ...]]:
    """Key -> shape of `build(config).state_dict()`, in order, built on the meta device (no weights)."""
    with torch.device("meta"):
        model = build(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _listed(label: str, items: list[str]) -> str:
    more = f", ... and {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else ""
    plural = "s" if len(items) != 1 else ""
    return f"{len(items)} {label}{plural}: {', '.join(items[:SHOWN_KEYS])}{more}"


def state_dict_problems(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps `state_dict` from loading into `model`: missing, unexpected and mis-shaped keys.

    Returns:
        one line per kind of problem (count and the first `SHOWN_KEYS` keys), empty when it fits.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = sorted(key for key in state_dict if key not in expected)
    mismatched = [
        f"{key} (checkpoint {tuple(state_dict[key].shape)}, model {tuple(value.shape)})"
        for key, value in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)
    ]
    return [
        _listed(label, items)
        for label, items in (
            ("missing key", missing),
            ("unexpected key", unexpected),
            ("mis-shaped key", mismatched),
        )
        if items
    ]


def shorten_keys(items: list[str], limit: int = 12) -> str:
    """The first `limit` items, comma-separated, then how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" … (+{len(items) - limit} more)" if len(items) > limit else "")


def check_layout(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], source: str, *, what: str
) -> None:
    """Raise ValueError naming every missing, unexpected and mis-shaped key of a foreign file's tensors
    against a released layout (key -> shape, e.g. from a model built on the meta device).

    Args:
        state_dict: tensors to check.
        expected: key -> shape of the layout.
        source: what the tensors come from, for the message.
        what: the layout's name, for the message ("the LlamaGen VQ layout").
    """
    problems = []
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mis_shaped = [
        f"{key} {tuple(state_dict[key].shape)} (expected {shape})"
        for key, shape in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(shape)
    ]
    if missing:
        problems.append(f"missing keys {shorten_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {shorten_keys(unexpected)}")
    if mis_shaped:
        problems.append(f"shape mismatch {shorten_keys(mis_shaped)}")
    if problems:
        raise ValueError(f"{source} does not match {what}: " + "; ".join(problems))


def load_state_dict_strictly(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    *,
    what: str = "the model",
) -> None:
    """Copy `state_dict` into `model`, or raise naming every kind of bad key.

    Args:
        model: the (unwrapped) module to fill.
        state_dict: tensors by parameter / buffer name.
        source: where the tensors came from (a path or URL), for the message.
        what: what `model` is, for the message ("the VQGAN config", "the MaskTransformer layout").

    Raises:
        ValueError: keys are missing or unexpected, or shapes differ; the message gives `source`, the
            count of each kind and the first keys of each.
    """
    problems = state_dict_problems(model, state_dict)
    if problems:
        raise ValueError(f"{source} does not match {what}: " + "; ".join(problems))
    model.load_state_dict(dict(state_dict), strict=True)
