"""`--storage-options` is one flag with one meaning in every job that reads object storage."""

from __future__ import annotations

import json

import pytest

from jobs.cli import build_parser, main
from jobs.train.driver import config_from_args

COMMANDS = {
    "tokenize": ["tokenize", "--input", "in", "--output", "out", "--tokenizer", "vq"],
    "train": ["train", "--store", "store", "--out", "run"],
    "export": ["export", "run/checkpoints", "weights"],
    "fid-stats": ["fid-stats", "--source", "images", "--out", "stats.npz"],
    "evaluate": [
        "evaluate",
        "--transformer",
        "t",
        "--tokenizer",
        "vq",
        "--out",
        "o",
        "--reference-stats",
        "s",
    ],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_job_defaults_to_the_environment_variable(command, monkeypatch):
    options = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    monkeypatch.setenv("MASKGIT_STORAGE_OPTIONS", json.dumps(options))
    args = build_parser().parse_args(COMMANDS[command])
    assert json.loads(args.storage_options) == options
    explicit = build_parser().parse_args([*COMMANDS[command], "--storage-options", '{"anon": true}'])
    assert json.loads(explicit.storage_options) == {"anon": True}


def test_train_config_gets_the_parsed_options(tmp_path, monkeypatch):
    monkeypatch.delenv("MASKGIT_STORAGE_OPTIONS", raising=False)
    path = tmp_path / "options.json"
    path.write_text('{"default_block_size": 1048576}')
    args = build_parser().parse_args([*COMMANDS["train"], "--storage-options", f"@{path}"])
    assert config_from_args(args).storage_options == {"default_block_size": 1048576}
    assert config_from_args(build_parser().parse_args(COMMANDS["train"])).storage_options == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [("[1, 2]", "must be a JSON object"), ("{endpoint", "is not valid JSON")],
)
def test_bad_options_are_named_before_any_work(value, message, monkeypatch, capsys):
    monkeypatch.delenv("MASKGIT_STORAGE_OPTIONS", raising=False)
    assert main([*COMMANDS["train"], "--storage-options", value]) == 2
    error = capsys.readouterr().err
    assert "--storage-options" in error and message in error
