"""Reader of the valeoai v2 (Halton-MaskGIT) transformer checkpoints (`ImageNet_{256,384}_{size}.pth`).

The only module that knows this foreign format (docs/reference.md#halton-transformer, "Checkpoint files"): a
`torch.save`d dict `{"iter", "global_epoch", "model_state_dict", "optimizer_state_dict"}` whose
`model_state_dict` uses the names of `transformer.halton.HaltonTransformer` 1:1 (including both
`tok_emb.weight` and the tied `head.weight`). EMA files (`ema.pth`, `last_ema.pth`) have the same
layout with `optimizer_state_dict` None. As the reference's loader does, every `module.` and
`_orig_mod.` substring is removed from the key names (DDP / torch.compile wrappers). The file is
read with `torch.load(weights_only=True)` and memory-mapped, so no pickled code runs and the AdamW
moments stored beside the weights are never read into memory.

The model size is recovered from the tensor shapes: `tok_emb` [K + 1, D], `cls_emb` [C + 1, D],
`pos_emb` [G², D], the layer count, `reg_tokens` [R, D]. Heads are not visible in shapes; a width
of a reference size (384, 512, 768, 1024, 1152) gives that size's heads, other widths need
`num_heads` (or a whole `config`). Every key is then checked: a missing, unexpected or mis-shaped
entry is an error that names it, and so is a `head.weight` that differs from `tok_emb.weight`.
A valeoai v1 MaskGIT file, or a tokenizer, is recognised and refused with a pointer to its reader.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

from transformer.config import HALTON_SIZES, HaltonConfig
from transformer.halton import HaltonTransformer
from weights.strict import check_layout, layout_of, read_torch_file, strip_wrapper_prefixes

REFERENCE_DROPOUT = 0.1  # training value of the released models; inference ignores it
_LAYER_KEY = re.compile(r"^transformer\.layers\.(\d+)\.")


class HaltonCheckpoint(NamedTuple):
    """A v2 checkpoint read into our terms; `HaltonTransformer(config).load_state_dict(state_dict)`."""

    config: HaltonConfig
    state_dict: dict[str, torch.Tensor]


def expected_shapes(config: HaltonConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of `HaltonTransformer(config).state_dict()`, in order, without allocating weights."""
    return layout_of(HaltonTransformer, config)


def _refuse_other_families(state_dict: dict[str, torch.Tensor], source: str) -> None:
    if "first_layer.0.weight" in state_dict or "transformer.layers.0.0.norm.weight" in state_dict:
        raise ValueError(
            f"{source} is a valeoai v1 MaskGIT checkpoint (keys 'first_layer.*', class token in the "
            "vocabulary), not a v2 Halton transformer; read it with transformer.convert "
            "(`maskgit convert-transformer`)"
        )
    if any(key.startswith(("encoder.", "decoder.", "quantize.")) for key in state_dict):
        raise ValueError(f"{source} holds a tokenizer (keys 'encoder.*'), not a Halton transformer")


def infer_halton_config(
    state_dict: dict[str, torch.Tensor], *, num_heads: int | None = None, source: str = "state dict"
) -> HaltonConfig:
    """Recover the `HaltonConfig` of a v2 state dict from its tensor shapes.

    Args:
        state_dict: the transformer's tensors (wrapper prefixes already removed).
        num_heads: attention heads; by default those of the reference size with this width.
        source: name used in error messages.

    Raises:
        ValueError: a v1 or tokenizer state dict, a missing key the inference needs, a non-square
            position table, or a width that is no reference size without `num_heads`.
    """
    _refuse_other_families(state_dict, source)

    def shape(key: str, dims: int) -> tuple[int, ...]:
        if key not in state_dict:
            found = ", ".join(list(state_dict)[:5])
            raise ValueError(
                f"{source}: missing key {key!r}; not a Halton transformer state dict (found {found}, …)"
            )
        value = tuple(state_dict[key].shape)
        if len(value) != dims:
            raise ValueError(f"{source}: {key!r} has shape {value}, expected {dims} dimensions")
        return value

    vocab, width = shape("tok_emb.weight", 2)
    classes = shape("cls_emb.weight", 2)[0]
    positions = shape("pos_emb.weight", 2)[0]
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ValueError(f"{source}: pos_emb has {positions} rows, which is not a square grid")
    layers = {int(match.group(1)) for key in state_dict if (match := _LAYER_KEY.match(key))}
    if not layers:
        raise ValueError(f"{source}: no 'transformer.layers.*' keys; not a Halton transformer state dict")
    if num_heads is None:
        by_width = {w: heads for w, _, heads in HALTON_SIZES.values()}
        if width not in by_width:
            raise ValueError(
                f"{source}: width {width} is not a reference size {sorted(by_width)}; heads are not "
                "visible in shapes, pass num_heads"
            )
        num_heads = by_width[width]
    ffn = shape("transformer.layers.0.ff.w1.weight", 2)[0]
    try:
        config = HaltonConfig(
            codebook_size=vocab - 1,
            grid_size=grid,
            num_classes=classes - 1,
            hidden_size=width,
            depth=max(layers) + 1,
            num_heads=num_heads,
            mlp_size=4 * width,
            num_registers=shape("reg_tokens.weight", 2)[0],
            dropout=REFERENCE_DROPOUT,
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}; pass the architecture as `config`") from error
    # The reference rounds the SwiGLU width up to a multiple of 256; smaller models may round to less.
    for multiple in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if config.replace(ffn_multiple_of=multiple).ffn_size == ffn:
            return config.replace(ffn_multiple_of=multiple)
    raise ValueError(
        f"{source}: transformer.layers.0.ff.w1.weight has {ffn} rows, which is no SwiGLU width of "
        f"mlp_size 4·D = {4 * width}; pass the architecture as `config`"
    )


def _state_dict_of(payload: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict) and isinstance(payload.get("model_state_dict"), dict):
        state_dict = payload["model_state_dict"]
    elif isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state_dict = payload
    else:
        found = sorted(map(str, payload))[:10] if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{source}: expected a dict with 'model_state_dict' (v2 .pth), found {found}")
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return strip_wrapper_prefixes(state_dict, anywhere=True, source=source)  # as the reference does


def read_halton_checkpoint(
    path: str | Path, *, config: HaltonConfig | None = None, num_heads: int | None = None
) -> HaltonCheckpoint:
    """Read a v2 Halton-MaskGIT `.pth` (or a bare state dict) strictly, without running pickled code.

    Args:
        path: the `.pth` file (e.g. `ImageNet_384_large.pth`).
        config: the expected architecture; by default inferred from the shapes.
        num_heads: attention heads for a width that is no reference size (ignored with `config`).

    Returns:
        HaltonCheckpoint(config, state_dict) that loads into `HaltonTransformer(config)` with strict=True.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: unreadable file, a v1 or tokenizer checkpoint, a missing, unexpected or
            mis-shaped key (named), or an untied head.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Halton transformer checkpoint file at {path}")
    state_dict = _state_dict_of(read_torch_file(path), str(path))
    _refuse_other_families(state_dict, str(path))
    if config is None:
        config = infer_halton_config(state_dict, num_heads=num_heads, source=str(path))
    check_layout(state_dict, expected_shapes(config), str(path), what="the Halton transformer layout")
    if not torch.equal(state_dict["head.weight"], state_dict["tok_emb.weight"]):
        raise ValueError(
            f"{path}: head.weight differs from tok_emb.weight, but the model ties them (one tensor)"
        )
    return HaltonCheckpoint(config=config, state_dict=state_dict)


def is_halton_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a torch file holding a v2 transformer state dict (by its key names: a class
    embedding `cls_emb.weight`, which v1 files do not have). Unreadable files give False."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        state_dict = _state_dict_of(read_torch_file(path), str(path))
    except ValueError:
        return False
    return "cls_emb.weight" in state_dict
