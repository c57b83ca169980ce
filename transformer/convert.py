"""Reader for the valeoai v1 MaskGIT checkpoints (`MaskGIT_ImageNet_256.pth`, `..._512.pth`).

The only place that knows the foreign format (docs/reference.md#checkpoints): a
`torch.save`d dict with `model_state_dict` (305 tensors whose names are already ours), `iter`,
`global_epoch` and `optimizer_state_dict`. It is read with `torch.load(weights_only=True)` (no
pickled code runs). The model sizes are recognised from the tensor shapes: `pos_emb` [1, N+1, D]
gives the grid, `tok_emb.weight` [V, D] the width and vocabulary, the layer count the depth. The
heads cannot be seen in shapes; every reference size uses 16. V = K + 1 + C + 1 cannot be split into
codebook size K and classes C from shapes alone: the released files (V = 2026) are K = 1024,
C = 1000, and other files need `num_classes` or `codebook_size`.

The reference itself loads with `strict=False`; here every key is checked (in
`weights.strict.load_state_dict_strictly`) and a mismatch is an error that names it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import NamedTuple

import torch

from transformer.config import SamplingConfig, TransformerConfig, reference_sampling_config
from weights.strict import read_torch_file, strip_wrapper_prefixes

REFERENCE_NUM_HEADS = 16
REFERENCE_DROPOUT = 0.1
# The released ImageNet checkpoints: 1024 taming VQGAN codes, 1000 classes.
RELEASED_VOCAB = (1024, 1000)
_LAYER_KEY = re.compile(r"^transformer\.layers\.(\d+)\.")


class ReferenceCheckpoint(NamedTuple):
    """A valeoai checkpoint read into our terms."""

    config: TransformerConfig
    state_dict: dict[str, torch.Tensor]
    sampling: SamplingConfig  # the reference's published settings for this resolution
    iteration: int | None
    epoch: int | None


def _require(state_dict: dict[str, torch.Tensor], key: str, dims: int, source: str) -> torch.Size:
    if key not in state_dict:
        raise ValueError(f"{source}: missing key {key!r}; not a valeoai MaskGIT transformer state dict")
    shape = state_dict[key].shape
    if len(shape) != dims:
        raise ValueError(f"{source}: {key!r} has shape {tuple(shape)}, expected {dims} dimensions")
    return shape


def infer_reference_config(
    state_dict: dict[str, torch.Tensor],
    *,
    num_classes: int | None = None,
    codebook_size: int | None = None,
    num_heads: int = REFERENCE_NUM_HEADS,
    source: str = "state dict",
) -> TransformerConfig:
    """Recover the `TransformerConfig` of a reference state dict from its tensor shapes.

    Args:
        state_dict: reference `model_state_dict`.
        num_classes: C, if not the released 1000 (give this or `codebook_size` for V != 2026).
        codebook_size: K, alternatively.
        num_heads: attention heads (not visible in shapes; 16 in every reference size).
        source: name used in error messages.

    Returns:
        the config whose `MaskTransformer` has exactly these shapes (checked when loading).
    """
    if "cls_emb.weight" in state_dict:
        raise ValueError(
            f"{source} is a valeoai v2 (Halton-MaskGIT) transformer checkpoint (key 'cls_emb.weight'), "
            "not v1; read it with transformer.convert_halton.read_halton_checkpoint (or load_transformer)"
        )
    vocab_size, width = _require(state_dict, "tok_emb.weight", 2, source)
    _, sequence_length, _ = _require(state_dict, "pos_emb", 3, source)
    grid_size = math.isqrt(sequence_length - 1)
    if grid_size * grid_size != sequence_length - 1:
        raise ValueError(f"{source}: pos_emb has {sequence_length} positions, which is not a square grid + 1")
    layer_ids = {int(match.group(1)) for key in state_dict if (match := _LAYER_KEY.match(key))}
    if not layer_ids:
        raise ValueError(
            f"{source}: no 'transformer.layers.*' keys; not a valeoai MaskGIT transformer state dict"
        )
    mlp_size = _require(state_dict, "transformer.layers.0.1.fn.net.0.weight", 2, source)[0]

    if num_classes is not None and codebook_size is not None:
        if codebook_size + num_classes + 2 != vocab_size:
            raise ValueError(
                f"{source}: codebook_size {codebook_size} + num_classes {num_classes} + 2 != "
                f"vocabulary rows {vocab_size}"
            )
    elif num_classes is not None:
        codebook_size = vocab_size - num_classes - 2
    elif codebook_size is not None:
        num_classes = vocab_size - codebook_size - 2
    elif vocab_size == sum(RELEASED_VOCAB) + 2:
        codebook_size, num_classes = RELEASED_VOCAB
    else:
        raise ValueError(
            f"{source}: vocabulary of {vocab_size} rows is not the released 2026 "
            "(1024 codes + 1000 classes + 2); "
            "pass num_classes or codebook_size"
        )
    if codebook_size < 1 or num_classes < 1:
        raise ValueError(
            f"{source}: vocabulary of {vocab_size} rows cannot hold codebook_size {codebook_size} and "
            f"num_classes {num_classes}"
        )
    return TransformerConfig(
        codebook_size=codebook_size,
        grid_size=grid_size,
        num_classes=num_classes,
        hidden_size=width,
        depth=max(layer_ids) + 1,
        num_heads=num_heads,
        mlp_size=mlp_size,
        dropout=REFERENCE_DROPOUT,
    )


def read_reference_checkpoint(
    path: str | Path,
    *,
    num_classes: int | None = None,
    codebook_size: int | None = None,
    num_heads: int = REFERENCE_NUM_HEADS,
) -> ReferenceCheckpoint:
    """Read a valeoai v1 `.pth` (or a bare state dict saved with `torch.save`) without running pickles.

    Args:
        path: the `.pth` file.
        num_classes: C for non-released vocabularies (see `infer_reference_config`).
        codebook_size: K, alternatively.
        num_heads: attention heads (16 in every reference size; not visible in shapes).

    Returns:
        ReferenceCheckpoint(config, state_dict, sampling, iteration, epoch).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reference checkpoint file at {path}")
    payload = read_torch_file(path)  # memory-mapped: the optimizer state (2x the weights) stays on disk
    if isinstance(payload, dict) and "model_state_dict" in payload:
        state_dict = payload["model_state_dict"]
    elif isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state_dict = payload
    else:
        keys = sorted(payload)[:10] if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: expected a dict with 'model_state_dict' (valeoai .pth), found {keys}")
    state_dict = strip_wrapper_prefixes(state_dict)  # only when every key carries them
    config = infer_reference_config(
        state_dict,
        num_classes=num_classes,
        codebook_size=codebook_size,
        num_heads=num_heads,
        source=str(path),
    )

    def integer(key: str) -> int | None:
        value = payload.get(key) if isinstance(payload, dict) else None
        return int(value) if isinstance(value, int | torch.Tensor) and not isinstance(value, bool) else None

    return ReferenceCheckpoint(
        config=config,
        state_dict=state_dict,
        sampling=reference_sampling_config(config.grid_size),
        iteration=integer("iter"),
        epoch=integer("global_epoch"),
    )
