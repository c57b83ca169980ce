"""The service contract without a server: options parsing, request models, the Serve config file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
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


def test_request_enums_are_the_samplers_names():
    import typing

    from jobs.serve.schema import CfgSchedule, NamedSchedule, Order
    from transformer.config import CFG_SCHEDULES, ORDERS
    from transformer.masking import JAX_SCHEDULES, REFERENCE_SCHEDULES, V2_SCHEDULES

    named = REFERENCE_SCHEDULES + V2_SCHEDULES + JAX_SCHEDULES[:-1]  # + jax-pow<K>
    assert typing.get_args(NamedSchedule) == named
    assert typing.get_args(Order) == ORDERS
    assert typing.get_args(CfgSchedule) == CFG_SCHEDULES
    assert GenerateRequest.model_validate({"class_id": 1, "schedule": "jax-pow2.5"}).schedule == "jax-pow2.5"
    for schedule in ("jax-pow", "jax-pow2\n", "zigzag"):
        with pytest.raises(ValidationError):
            GenerateRequest.model_validate({"class_id": 1, "schedule": schedule})


def test_integers_take_whole_json_numbers_only():
    assert GenerateRequest.model_validate({"class_id": 3.0, "seed": 5.0}).requested_class_ids() == [3]
    for value in (3.5, "3", True, float("inf")):
        with pytest.raises(ValidationError):
            GenerateRequest.model_validate({"class_id": value})


def test_deployment_bounds_validate_and_document_the_same_limits():
    from jobs.serve.limits import deployment_models

    options = ServeOptions(transformer="t", tokenizer="k", max_images_per_request=3, max_steps=5)
    info = {"num_classes": 10, "image_size": 32, "downsample_factor": 4, "sampling_defaults": {}}
    models = deployment_models(options, info)
    models.generate.model_validate({"class_ids": [9, 0, 1], "steps": 5})
    for body in (
        {"class_ids": [10]},
        {"class_ids": [1] * 4},
        {"class_id": 1, "count": 4},
        {"class_id": 1, "steps": 6},
    ):
        with pytest.raises(ValidationError):
            models.generate.model_validate(body)
    schema = models.generate.model_json_schema()
    assert schema["properties"]["steps"]["anyOf"][0]["maximum"] == 5
    assert schema["properties"]["class_ids"]["anyOf"][0]["items"]["exclusiveMaximum"] == 10
    box = models.inpaint.model_json_schema()["$defs"]["PixelBox"]["properties"]
    assert (box["top"]["maximum"], box["height"]["maximum"]) == (31, 32)


@given(st.sampled_from(["Sneaker", "T-shirt/top", "Ankle boot", "7", "0", "9"]), st.data())
@settings(max_examples=200, deadline=None)
def test_prompt_pattern_accepts_exactly_what_the_lookup_accepts(name, data):
    """The prompt pattern in the document (checked the way schemathesis checks it) and the server's class
    lookup agree on every prompt: case changes, spaces around, and edits of valid ones."""
    import jsonschema_rs

    from jobs.serve.openai_images import ClassNames, OpenAIError

    classes = ClassNames(["T-shirt/top", "Trouser", "Sneaker", "Ankle boot", "Bag"] * 2, 10)
    validator = jsonschema_rs.validator_for({"type": "string", "pattern": classes.pattern()})
    cased = "".join(c.upper() if data.draw(st.booleans()) else c.lower() for c in name)
    edit = data.draw(st.sampled_from(["", "pad", "prefix", "suffix", "drop", "unicode"]))
    text = {
        "": cased, "pad": f" \t{cased}\n", "prefix": f"0{cased}", "suffix": f"{cased}s",
        "drop": cased[1:], "unicode": cased.replace("k", "\u212a"),
    }[edit]  # fmt: skip
    try:
        classes.resolve(text)
        accepted = True
    except OpenAIError:
        accepted = False
    assert validator.is_valid(text) == accepted, repr(text)


def test_any_order_goes_with_any_schedule_and_seeds_share_one_bound():
    from transformer.config import MAX_SEED

    for order in ("confidence", "halton"):
        for schedule in ("arccos", "halton", "arccos-v2", "cosine"):
            body = {"class_id": 1, "order": order, "schedule": schedule}
            assert GenerateRequest.model_validate(body).schedule == schedule
    assert MAX_SEED == 2**53  # the largest range a JSON (JavaScript) client holds exactly
    assert GenerateRequest.model_validate({"class_id": 1, "seed": MAX_SEED - 1}).seed == MAX_SEED - 1
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate({"class_id": 1, "seed": MAX_SEED})
    seed_schema = GenerateRequest.model_json_schema()["properties"]["seed"]["anyOf"][0]
    assert seed_schema["exclusiveMaximum"] == MAX_SEED and seed_schema["minimum"] == 0
