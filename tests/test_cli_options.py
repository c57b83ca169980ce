"""The one CLI style: every flag's dest is a field of its command's options dataclass, and
`options_from_args` builds that dataclass; the Ray address resolves the same way for every command."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from jobs.cli import build_parser
from jobs.convert import ConvertTransformerOptions, ConvertVqganOptions
from jobs.evaluate.fid_stats import FidStatsOptions
from jobs.evaluate.options import EvaluateOptions
from jobs.options import SAMPLING_HELP, options_from_args, prefixed_values
from jobs.quickstart.command import QuickstartOptions
from jobs.ray_session import resolve_ray_address
from jobs.serve.app import ServeRun
from jobs.serve.schema import ServeOptions
from jobs.tokenize import TokenizeOptions
from jobs.train.config import TrainJobConfig
from jobs.train.deepspeed_config import OptimizerSettings
from jobs.train.driver import config_from_args
from jobs.train.export import ExportOptions
from jobs.train_tokenizer import TrainTokenizerOptions


def _fields(*classes) -> set[str]:
    return {field.name for cls in classes for field in dataclasses.fields(cls)}


# command -> (the dataclasses its dests fill, dests read otherwise: nested prefixes, sampling knobs)
COMMANDS = {
    "tokenize": (_fields(TokenizeOptions), set()),
    "export": (_fields(ExportOptions), set()),
    "convert-vqgan": (_fields(ConvertVqganOptions), set()),
    "convert-transformer": (_fields(ConvertTransformerOptions), set()),
    "train-tokenizer": (_fields(TrainTokenizerOptions), set()),
    "serve": (_fields(ServeOptions, ServeRun), set()),
    "fid-stats": (_fields(FidStatsOptions), set()),
    "evaluate": (_fields(EvaluateOptions), set(SAMPLING_HELP)),  # gathered into `sampling`
    "quickstart": (_fields(QuickstartOptions), set()),
    "train": (
        _fields(TrainJobConfig) | {"ray_address"},
        {"optimizer_" + name for name in _fields(OptimizerSettings)},
    ),
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_lands_in_a_field_of_the_options(command):
    fields, extra = COMMANDS[command]
    dests = {a.dest for a in _subparsers()[command]._actions if a.dest != "help"}
    if command == "train":  # model overrides and exported sampling defaults: dicts of the config
        dests = {d for d in dests if not d.startswith(("model_", "sampling_"))}
    assert dests - fields - extra == set()


def test_every_command_is_covered_here():
    assert set(_subparsers()) - set(COMMANDS) <= {"sample"}  # sample: rewritten by its own change


def test_options_from_args_maps_dests_parses_storage_options_and_takes_overrides():
    args = argparse.Namespace(
        checkpoint_dir="ckpt", out="w", step=3, use_ema=None, storage_options='{"anon": true}', run=print
    )
    options = options_from_args(ExportOptions, args)
    assert options == ExportOptions("ckpt", "w", step=3, storage_options={"anon": True})
    assert options_from_args(ExportOptions, args, step=7).step == 7
    bad = argparse.Namespace(checkpoint_dir="c", out="o", storage_options="{x")
    with pytest.raises(ValueError, match="--storage-options is not valid JSON"):
        options_from_args(ExportOptions, bad)


def test_nested_options_come_from_prefixed_dests():
    args = argparse.Namespace(
        optimizer_lr=0.5, optimizer_schedule="cosine", model_depth=2, model_dropout=None
    )
    assert options_from_args(OptimizerSettings, args, prefix="optimizer_") == OptimizerSettings(
        lr=0.5, schedule="cosine"
    )
    assert prefixed_values(args, "model_") == {"depth": 2}


def test_train_flags_build_the_same_config_as_the_dataclass():
    # --steps / --mask-schedule are the run's own; --sample-steps / --sample-schedule the exported defaults.
    args = build_parser().parse_args(
        ["train", "--store", "s", "--out", "o", "--workers", "4", "--gpu", "--lr", "3e-4", "--betas", "0.8",
         "0.9", "--lr-schedule", "cosine", "--mask-schedule", "linear", "--depth", "3", "--sample-steps", "9",
         "--sample-schedule", "cosine", "--steps", "50",
         "--global-batch-size", "128", "--micro-batch-size", "16", "--storage-options", json.dumps({"a": 1})]
    )  # fmt: skip
    config = config_from_args(args)
    assert config == TrainJobConfig(
        store="s",
        out="o",
        steps=50,
        num_workers=4,
        use_gpu=True,
        global_batch_size=128,
        micro_batch_size=16,
        optimizer=OptimizerSettings(lr=3e-4, betas=(0.8, 0.9), schedule="cosine"),
        schedule="linear",
        model_overrides={"depth": 3},
        sampling={"steps": 9, "schedule": "cosine"},
        storage_options={"a": 1},
    )


def test_ray_address_resolves_flag_then_environment_then_local(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_ray_address(None) is None  # start a local Ray
    assert resolve_ray_address("auto") == "auto"  # the cluster running on this node
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # as `ray job submit` sets it
    assert resolve_ray_address(None) == "10.0.0.1:6379"
    assert resolve_ray_address("head:6379") == "head:6379"
    assert resolve_ray_address("local") is None
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert resolve_ray_address(None) is None


@pytest.mark.parametrize("flag", ["--ray-address", "--address"])
def test_ray_commands_take_the_address_under_both_spellings(flag):
    for argv in (
        ["tokenize", "--input", "i", "--output", "o", "--tokenizer", "t"],
        ["train", "--store", "s", "--out", "o"],
        ["serve", "--transformer", "t", "--tokenizer", "v"],
        ["evaluate", "--transformer", "t", "--tokenizer", "v", "--out", "o", "--reference-stats", "s"],
    ):
        assert build_parser().parse_args([*argv, flag, "auto"]).ray_address == "auto"


def test_detach_without_a_cluster_is_refused_before_anything_starts(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="--detach needs a running Ray cluster"):
        ServeRun(detach=True)
    assert ServeRun(detach=True, ray_address="auto").detach
