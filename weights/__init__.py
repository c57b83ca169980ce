"""Our weight format, shared by every model: a folder with `config.json` + `model.safetensors`.

Pure: imports only `storage` of ours (plus torch, safetensors and fsspec). The model packages build on
it (`tokenizer.checkpoint`, `transformer.checkpoint`); see docs/architecture.md, "Weights".

Public API:
    save_folder, read_folder_config, load_folder_weights, is_model_folder, weights_digest,
    local_copy, exists, is_local, CONFIG_FILE, WEIGHTS_FILE, FOLDER_VERSION           -- weights.folder
    unwrap_model, load_state_dict_strictly, state_dict_problems      -- weights.strict
"""

from weights.folder import (
    CONFIG_FILE,
    FOLDER_VERSION,
    WEIGHTS_FILE,
    exists,
    is_local,
    is_model_folder,
    load_folder_weights,
    local_copy,
    read_folder_config,
    save_folder,
    weights_digest,
)
from weights.strict import load_state_dict_strictly, state_dict_problems, unwrap_model

__all__ = [
    "CONFIG_FILE",
    "FOLDER_VERSION",
    "WEIGHTS_FILE",
    "exists",
    "is_local",
    "is_model_folder",
    "load_folder_weights",
    "load_state_dict_strictly",
    "local_copy",
    "read_folder_config",
    "save_folder",
    "state_dict_problems",
    "unwrap_model",
    "weights_digest",
]
