"""`maskgit export`: a training checkpoint (any ZeRO stage, any world size) -> our transformer folder.

Consolidates DeepSpeed's partitioned fp32 master weights with DeepSpeed's own
`get_fp32_state_dict_from_zero_checkpoint` (or takes the consolidated EMA weights when the run kept an
EMA), loads them strictly into a fresh transformer of the run's family, and writes `config.json`
(model config and sampling defaults) + `model.safetensors`, which `maskgit sample` and the server
load directly.
Nothing downstream ever sees a DeepSpeed layout (docs/architecture.md#weights).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.options import add_storage_options_argument, options_from_args
from jobs.train.checkpoints import CheckpointError, CheckpointStore, step_dirname

logger = logging.getLogger(__name__)


def export_checkpoint(
    checkpoint_uri: str,
    out: str,
    *,
    step: int | None = None,
    use_ema: bool | None = None,
    storage_options: dict | None = None,
    class_names: tuple[str, ...] | None = None,
) -> str:
    """Write the weights of a training checkpoint in our folder format; returns `out`.

    Args:
        checkpoint_uri: the run's checkpoint directory (local or s3://).
        out: output folder (local or s3://).
        step: which checkpoint (default: the latest complete one).
        use_ema: export the EMA weights (default: when the run kept an EMA).
        storage_options: fsspec options for both locations.
        class_names: names of the classes (the token store's), stored with the weights.
    """
    from jobs.train.deepspeed_config import select_accelerator

    select_accelerator()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    from transformer.checkpoint import save_transformer
    from transformer.config import stored_sampling_config
    from transformer.families import build_transformer, transformer_config_from_dict
    from weights import load_state_dict_strictly

    store = CheckpointStore(checkpoint_uri, storage_options)
    step = step if step is not None else store.latest_step()
    if step is None:
        raise CheckpointError(f"no complete checkpoint under {checkpoint_uri}")
    meta = store.read_meta(step)
    use_ema = meta.has_ema if use_ema is None else use_ema
    if use_ema and not meta.has_ema:
        raise ValueError(f"checkpoint {checkpoint_uri}/{step_dirname(step)} has no EMA weights")
    with tempfile.TemporaryDirectory(prefix="maskgit-export-") as tmp:
        step_dir = store.download(step, Path(tmp))
        if use_ema:
            state_dict = load_file(str(step_dir / "ema.safetensors"))
        else:
            state_dict = get_fp32_state_dict_from_zero_checkpoint(tmp, tag=step_dirname(step))
        model = build_transformer(transformer_config_from_dict(meta.model_config))
        load_state_dict_strictly(
            model,
            {k: v.float() for k, v in state_dict.items()},
            f"checkpoint step {step}",
            what=f"the {type(model).__name__} layout",
        )
        sampling = stored_sampling_config(meta.extra.get("sampling") or {})  # reads pre-split v2 pairs
        save_transformer(
            model, out, sampling=sampling, class_names=class_names,
            storage_options=storage_options,
        )  # atomic, local or remote, with our object-store retries (weights/ opens it through storage/)
    logger.info("exported step %d (%s weights) to %s", step, "EMA" if use_ema else "fp32", out)
    return out


@dataclass(frozen=True)
class ExportOptions:
    """Settings of `maskgit export`.

    Attributes:
        checkpoint_dir: the run's checkpoint directory (local or s3://).
        out: output folder (local or s3://).
        step: which checkpoint (None: the latest complete one).
        use_ema: export the EMA weights (None: when the run kept an EMA).
        storage_options: fsspec options for both locations (None: the AWS environment).
    """

    checkpoint_dir: str
    out: str
    step: int | None = None
    use_ema: bool | None = None
    storage_options: dict[str, Any] | None = None


def run_export(options: ExportOptions) -> str:
    """`export_checkpoint` with the command's settings; returns the output folder."""
    return export_checkpoint(
        options.checkpoint_dir,
        options.out,
        step=options.step,
        use_ema=options.use_ema,
        storage_options=options.storage_options,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand; every flag's dest is an `ExportOptions` field."""
    parser = subparsers.add_parser(
        "export",
        help="write a training checkpoint's weights in our folder format for sampling/serving",
        description="Consolidate a DeepSpeed ZeRO checkpoint (fp32 master or EMA weights) into "
        "config.json + model.safetensors with the sampling defaults.",
    )
    parser.add_argument("checkpoint_dir", help="the run's checkpoint directory (local path or s3://...)")
    parser.add_argument("out", help="output folder (local path or s3://...)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ema = parser.add_mutually_exclusive_group()
    ema.add_argument("--ema", dest="use_ema", action="store_true", default=None, help="export EMA weights")
    ema.add_argument("--no-ema", dest="use_ema", action="store_false", help="export the raw fp32 weights")
    add_storage_options_argument(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    out = run_export(options_from_args(ExportOptions, args))
    print(f"exported to {out}")
    return 0
