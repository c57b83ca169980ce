"""The service contract without a server: options parsing, request models, the Serve config file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from generation.regions import mask_to_token_region
from jobs.serve.schema import GenerateRequest, InpaintRequest, ServeOptions

CONFIG_FILE = Path(__file__).resolve().parents[1] / "jobs" / "serve" / "config.yaml"


def test_options_from_strings_as_serve_run_passes_them():
    options = ServeOptions.from_dict(
        {
            "transformer": "a/b",
            "tokenizer": "c",
            "replicas": "2",
            "num_gpus": "0.5",
            "autocast_bf16": "true",
            "max_replicas": "none",
        }
    )
    assert (options.replicas, options.num_gpus, options.autocast_bf16) == (2, 0.5, True)
    assert options.max_replicas is None
    assert options.display_name == "b"  # the folder's name, never its path
    assert options.sampler_max_ongoing_requests >= options.max_batch_images


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"colour": "red"}, "unknown serve option(s) ['colour']"),
        ({"replicas": "two"}, "replicas='two' is not a valid int"),
        ({"replicas": 0}, "replicas must be >= 1"),
        ({"max_images_per_request": 64, "max_batch_images": 32}, "one request must fit in one sampler batch"),
        ({"device": "tpu"}, "device must be"),
        ({"max_replicas": 1, "min_replicas": 2}, "max_replicas (1) must be >= min_replicas (2)"),
        ({"autocast_bf16": "maybe"}, "autocast_bf16='maybe' is not a valid bool"),
        ({"port": True}, "port must be a int"),
    ],
)
def test_bad_options_are_named(values, message):
    with pytest.raises(ValueError) as error:
        ServeOptions.from_dict({"transformer": "t", "tokenizer": "k", **values})
    assert message in str(error.value)


def test_generate_request_rules():
    assert GenerateRequest(class_id=3, count=2).requested_class_ids() == [3, 3]
    assert GenerateRequest(class_ids=[1, 2]).requested_class_ids() == [1, 2]
    assert GenerateRequest(class_id=4).requested_class_ids() == [4]
    for body in (
        {},
        {"class_id": 1, "class_ids": [1]},
        {"class_ids": [1], "count": 2},
        {"class_id": 1, "steps": 0},
        {"class_id": 1, "temperature": 0.0},
        {"class_id": 1, "schedule": "zigzag"},
        {"class_id": "1"},  # strict: no silent string -> int
        {"class_id": True},
        {"class_id": 1, "seed": -1},
        {"class_id": 1, "output": "jpeg"},
        {"class_id": 1, "unknown": 0},
        {"class_ids": []},
    ):
        with pytest.raises(ValidationError):
            GenerateRequest.model_validate(body)
    # JSON numbers: an int is a fine temperature
    assert GenerateRequest.model_validate_json('{"class_id": 1, "temperature": 1}').temperature == 1.0


def test_inpaint_request_needs_exactly_one_region():
    box = {"top": 0, "left": 0, "height": 4, "width": 4}
    InpaintRequest(image="x", box=box, class_id=0)
    InpaintRequest(image="x", mask="y", class_id=0)
    for body in (
        {"image": "x", "class_id": 0},
        {"image": "x", "class_id": 0, "box": box, "mask": "y"},
        {"image": "x", "class_id": 0, "mask": "y", "margin": 2},
        {"image": "x", "class_id": 0, "box": {**box, "height": 0}},
    ):
        with pytest.raises(ValidationError):
            InpaintRequest.model_validate(body)


def test_pixel_mask_covers_every_touched_token():
    mask = np.zeros((32, 32), dtype=bool)
    mask[5, 9] = True  # one pixel in token (1, 2) of a 4-pixel grid
    mask[16:24, 0:4] = True  # exactly tokens (4..5, 0)
    region = mask_to_token_region(mask, 4)
    assert region.shape == (8, 8)
    assert sorted(zip(*np.nonzero(region))) == [(1, 2), (4, 0), (5, 0)]


def test_serve_config_file_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    document = yaml.safe_load(CONFIG_FILE.read_text())
    config = ServeDeploySchema.model_validate(document)
    (app,) = config.applications
    assert app.import_path == "jobs.serve.app:app_builder"
    options = ServeOptions.from_dict(app.args)  # every arg is an option
    assert options.max_images_per_request <= options.max_batch_images
    assert config.http_options.host == "127.0.0.1"


def test_app_builder_builds_the_two_deployments(tmp_path):
    from ray.serve._private.utils import import_attr

    from jobs.serve.app import INGRESS_DEPLOYMENT, SAMPLER_DEPLOYMENT

    builder = import_attr("jobs.serve.app:app_builder")
    args = {**yaml.safe_load(CONFIG_FILE.read_text())["applications"][0]["args"], "replicas": 3}
    app = builder(args)
    ingress = app._bound_deployment
    sampler = ingress.init_args[0]._bound_deployment
    assert (ingress.name, sampler.name) == (INGRESS_DEPLOYMENT, SAMPLER_DEPLOYMENT)
    assert sampler.num_replicas == 3
    # The batch can fill: the replica accepts at least a full batch of one-image requests.
    assert sampler.max_ongoing_requests >= args["max_batch_images"]
    assert ingress.max_ongoing_requests >= 32
    autoscaled = builder({**args, "max_replicas": 4})
    scaling = autoscaled._bound_deployment.init_args[
        0
    ]._bound_deployment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 4)
    assert scaling.target_ongoing_requests == args["max_batch_images"]


def test_cli_names_missing_checkpoints(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from jobs.cli import main

    code = main(["serve", "--transformer", str(tmp_path / "none"), "--tokenizer", str(tmp_path)])
    assert code == 2
    assert "--transformer" in capsys.readouterr().err
    code = main(["serve", "--transformer", str(tmp_path), "--tokenizer", str(tmp_path), "--detach"])
    assert code == 2
    assert "--detach needs a running Ray cluster" in capsys.readouterr().err


def test_cli_refuses_checkpoints_that_do_not_belong_together(tmp_path, capsys):
    from jobs.cli import main
    from tokenizer import VQGAN, preset, save_vqgan
    from transformer import MaskTransformer, TransformerConfig, save_transformer

    save_vqgan(VQGAN(preset("tiny-f4")), tmp_path / "tokenizer")  # 256 codes
    config = TransformerConfig(
        codebook_size=128, grid_size=8, num_classes=10, hidden_size=32, depth=1, num_heads=2
    )
    save_transformer(MaskTransformer(config), tmp_path / "transformer")
    code = main(
        ["serve", "--transformer", str(tmp_path / "transformer"), "--tokenizer", str(tmp_path / "tokenizer")]
    )
    assert code == 2
    assert "expects 128 codes but the tokenizer has 256" in capsys.readouterr().err
