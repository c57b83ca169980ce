"""Reader of LlamaGen VQ checkpoints (the released `vq_ds16_c2i.pt`, the valeoai v2 tokenizer).

The only module that knows this foreign format (docs/reference.md#llamagen-vq-tokenizer): a
`torch.save`d dict whose `"model"` entry is the VQ model's state dict, 344 entries for VQ-16
(`codebook_used` included), with the names `tokenizer.llamagen.LlamaGenVQ` uses, so it maps 1:1
without renaming. LlamaGen's trainer may also have stored `"steps"` and an `argparse.Namespace`
under `"args"`; the file is read with `torch.load(weights_only=True)` with `argparse.Namespace` (a
plain attribute bag) as the only allow-listed class, so no pickled code runs. Other entries
(`"optimizer"`, `"discriminator"`, …) are ignored. Files with `"ema"` or `"state_dict"` instead of
`"model"`, and bare state dicts, are read too (`"model"` wins, as in the Halton trainer that
consumes the file).

The architecture is recovered from the tensor shapes (levels, widths, codebook); GroupNorm's group
count is not visible in shapes and is LlamaGen's 32 unless a `config` is given. Every key is then
checked: a missing, unexpected or mis-shaped entry is an error naming it. A taming VQGAN checkpoint
(the v1 tokenizer) is recognised and refused with a pointer to its own reader.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tokenizer.config import LlamaGenVQConfig
from tokenizer.llamagen import LlamaGenVQ
from weights.strict import check_layout, layout_of, read_torch_file, shorten_keys, strip_wrapper_prefixes

STATE_DICT_ENTRIES = ("model", "ema", "state_dict")
_ENCODER_RES = re.compile(r"^encoder\.conv_blocks\.(\d+)\.res\.(\d+)\.conv2\.weight$")


class LlamaGenCheckpoint(NamedTuple):
    """A LlamaGen VQ checkpoint read into our terms; `LlamaGenVQ(config).load_state_dict(state_dict)`."""

    config: LlamaGenVQConfig
    state_dict: dict[str, torch.Tensor]


def expected_shapes(config: LlamaGenVQConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of `LlamaGenVQ(config).state_dict()`, in order, without allocating weights."""
    return layout_of(LlamaGenVQ, config)


def _refuse_other_families(state_dict: dict[str, torch.Tensor], source: str) -> None:
    keys = list(state_dict)
    if any(key.startswith(("encoder.down.", "decoder.up.", "loss.")) for key in keys):
        raise ValueError(
            f"{source} is a taming VQGAN checkpoint (keys 'encoder.down.*'), the v1 tokenizer, "
            "not a LlamaGen VQ; read it with tokenizer.convert (`maskgit convert-vqgan`)"
        )
    if "tok_emb.weight" in state_dict:
        raise ValueError(f"{source} holds a transformer (key 'tok_emb.weight'), not a LlamaGen VQ tokenizer")


def infer_llamagen_config(
    state_dict: dict[str, torch.Tensor], *, norm_groups: int = 32, source: str = "state dict"
) -> LlamaGenVQConfig:
    """Recover the `LlamaGenVQConfig` of a LlamaGen VQ state dict from its tensor shapes.

    Args:
        state_dict: the VQ model's tensors.
        norm_groups: GroupNorm groups (not visible in shapes; LlamaGen uses 32).
        source: name used in error messages.

    Raises:
        ValueError: a taming or transformer state dict, or a key the inference needs is missing.
    """
    _refuse_other_families(state_dict, source)

    def shape(key: str, dims: int) -> tuple[int, ...]:
        if key not in state_dict:
            found = ", ".join(list(state_dict)[:5])
            raise ValueError(
                f"{source}: missing key {key!r}; not a LlamaGen VQ state dict (found {found}, …)"
            )
        value = tuple(state_dict[key].shape)
        if len(value) != dims:
            raise ValueError(f"{source}: {key!r} has shape {value}, expected {dims} dimensions")
        return value

    ch, in_channels = shape("encoder.conv_in.weight", 4)[:2]
    blocks: dict[int, dict[int, int]] = {}
    for key in state_dict:
        if match := _ENCODER_RES.match(key):
            blocks.setdefault(int(match.group(1)), {})[int(match.group(2))] = state_dict[key].shape[0]
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise ValueError(f"{source}: encoder.conv_blocks.* are missing or not numbered 0, 1, …")
    widths = [blocks[level][max(blocks[level])] for level in range(len(blocks))]
    if any(width % ch for width in widths):
        raise ValueError(f"{source}: level widths {widths} are not multiples of the base width {ch}")
    n_embed, embed_dim = shape("quantize.embedding.weight", 2)
    out_channels = shape("decoder.conv_out.weight", 4)[0]
    z_channels = shape("encoder.conv_out.weight", 4)[0]
    try:
        return LlamaGenVQConfig(
            in_channels=in_channels,
            out_channels=out_channels,
            ch=ch,
            ch_mult=tuple(width // ch for width in widths),
            num_res_blocks=len(blocks[0]),
            z_channels=z_channels,
            embed_dim=embed_dim,
            n_embed=n_embed,
            norm_groups=norm_groups,
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}; pass the architecture as `config`") from error


def _load_payload(path: Path) -> Any:
    # argparse.Namespace is LlamaGen's stored "args": a plain attribute bag, safe to rebuild.
    return read_torch_file(path, allowed=[argparse.Namespace])


def _state_dict_of(payload: Any, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(payload, dict):
        raise ValueError(f"{source}: expected a dict, found {type(payload).__name__}")
    for entry in STATE_DICT_ENTRIES:
        if isinstance(payload.get(entry), dict):
            state_dict = dict(payload[entry])
            break
    else:
        if payload and all(isinstance(value, torch.Tensor) for value in payload.values()):
            state_dict = dict(payload)
        else:
            raise ValueError(
                f"{source}: expected a dict with one of {list(STATE_DICT_ENTRIES)} (LlamaGen VQ checkpoint) "
                f"or a bare state dict, found entries {sorted(map(str, payload))[:10]}"
            )
    state_dict = strip_wrapper_prefixes(state_dict)  # only when every key has them
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{source}: entries that are not tensors: {shorten_keys(not_tensors)}")
    return state_dict


def read_llamagen_checkpoint(
    path: str | Path, *, config: LlamaGenVQConfig | None = None
) -> LlamaGenCheckpoint:
    """Read a LlamaGen VQ checkpoint strictly, without running pickled code.

    Args:
        path: the `.pt` file (e.g. `vq_ds16_c2i.pt`).
        config: the expected architecture; by default inferred from the shapes (GroupNorm 32 groups).

    Returns:
        LlamaGenCheckpoint(config, state_dict) that loads into `LlamaGenVQ(config)` with strict=True.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: unreadable file, a taming or transformer checkpoint, or a missing, unexpected or
            mis-shaped key (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LlamaGen VQ checkpoint file at {path}")
    state_dict = _state_dict_of(_load_payload(path), str(path))
    _refuse_other_families(state_dict, str(path))
    if config is None:
        config = infer_llamagen_config(state_dict, source=str(path))
    check_layout(state_dict, expected_shapes(config), str(path), what="the LlamaGen VQ layout")
    return LlamaGenCheckpoint(config=config, state_dict=state_dict)


def is_llamagen_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a torch file holding a LlamaGen VQ state dict (by its key names; nothing checked
    beyond that). Files that cannot be read weights-only, taming checkpoints and ours give False."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        state_dict = _state_dict_of(_load_payload(path), str(path))
    except ValueError:
        return False
    return any(key.startswith("encoder.conv_blocks.") for key in state_dict)
