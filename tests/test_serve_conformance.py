"""The service's HTTP contract against the live app on 127.0.0.1 (Ray Serve in a local Ray).

schemathesis runs every one of its checks over the OpenAPI document the app serves (a request the
document calls valid must be accepted, an invalid one refused with a 4xx, answers must match their
documented schemas, 405s must carry `Allow`, ...); then the OpenAI-shaped endpoint, the streamed
answers and the JSON errors are checked by hand.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jsonschema_rs
import numpy as np
import pytest
import requests
from PIL import Image
from serve_helpers import free_port, serve_app, sse_events, train_tiny_models

pytestmark = pytest.mark.ray

NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
HOOKS = "serve_schemathesis_hooks"  # tests/serve_schemathesis_hooks.py: images for format image-base64


@pytest.fixture(scope="module")
def api(tmp_path_factory, fashion_mnist_small):
    """The app with small limits (2 images, 4 steps: every request schemathesis makes is cheap)."""
    from jobs.serve.schema import ServeOptions

    images, labels = fashion_mnist_small
    models = train_tiny_models(
        tmp_path_factory.mktemp("conformance"), images, labels, steps=30, class_names=NAMES
    )
    options = ServeOptions(
        transformer=models.transformer, tokenizer=models.tokenizer, model_name="tiny-fashion",
        port=free_port(), max_batch_images=8, max_images_per_request=2, max_steps=4,
        max_payload_bytes=256 * 1024, max_image_side=256,
    )  # fmt: skip
    with serve_app(options) as url:
        yield SimpleNamespace(url=url, options=options, models=models)


def _post(api, route: str, body, **kwargs) -> requests.Response:
    return requests.post(f"{api.url}{route}", json=body, timeout=120, **kwargs)


def _png(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as image:
        return np.asarray(image.convert("RGB"))




def test_schemathesis_finds_no_disagreement(api, tmp_path):
    """`st run --checks all`: every phase (examples, coverage, fuzzing, stateful), zero failures.

    Not on `/v1/images/edits`: its multipart files are images schemathesis cannot make (random bytes
    are "valid" binary to it); tests/test_serve_openai_client.py covers it with OpenAI's client."""
    tests_dir = str(Path(__file__).resolve().parent)
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": HOOKS,
        "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")])),
        "MASKGIT_TEST_IMAGE_SIZE": "32",
    }
    command = [
        str(Path(sys.executable).with_name("st")), "run", f"{api.url}/openapi.json", "--checks", "all",
        "--max-examples", "6", "--seed", "0", "--workers", "1", "--generation-database", "none",
        "--request-timeout", "120", "--exclude-path", "/v1/images/edits",
        "--no-color", "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    start = time.monotonic()
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    summary = run.stdout[-6000:]
    print(f"schemathesis: {time.monotonic() - start:.0f} s\n{summary}")
    assert run.returncode == 0, f"schemathesis found problems:\n{summary}\n{run.stderr[-2000:]}"
    assert "No issues found" in run.stdout


def test_document_states_the_deployment_bounds(api):
    document = requests.get(f"{api.url}/openapi.json", timeout=30).json()
    schemas = document["components"]["schemas"]
    generate = schemas["GenerateRequest"]
    steps = generate["properties"]["steps"]["anyOf"][0]
    assert (steps["minimum"], steps["maximum"]) == (1, 4)
    ids = generate["properties"]["class_ids"]["anyOf"][0]
    assert ids["maxItems"] == 2 and ids["items"]["exclusiveMaximum"] == 10
    assert generate["properties"]["count"]["anyOf"][0]["maximum"] == 2
    # The rules across fields are in the document, and the server agrees with it both ways.
    validator = jsonschema_rs.validator_for(generate)
    for body in (
        {},
        {"class_id": 1, "class_ids": [1]},
        {"class_ids": [1], "count": 1},
        {"class_id": 1, "steps": 5},
    ):
        assert not validator.is_valid(body)
        assert _post(api, "/v1/generate", body).status_code == 422, body
    for body in ({"class_id": 1, "class_ids": None}, {"class_ids": [1, 2], "count": None, "seed": 3.0}):
        assert validator.is_valid(body)
        assert _post(api, "/v1/generate", {**body, "output": "tokens"}).status_code == 200, body
    images = schemas["ImageGenerationRequest"]["properties"]
    prompt = jsonschema_rs.validator_for(images["prompt"])
    for text in ("sneaker", "ANKLE BOOT", " Sandal\n", "7", "t-shirt/top"):
        assert prompt.is_valid(text), text
    for text in ("sneakers", "07", "+7", "10", "ankle-boot", ""):
        assert not prompt.is_valid(text), text
    assert images["size"]["anyOf"][0]["enum"] == ["32x32", "auto"]  # OpenAI's "auto": the model's size
    stream = document["paths"]["/v1/generate"]["post"]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(stream)


def test_errors_are_json_and_405_says_allow(api):
    for method, route, allowed in (("GET", "/v1/generate", "POST"), ("DELETE", "/v1/models", "GET")):
        reply = requests.request(method, f"{api.url}{route}", timeout=30)
        assert reply.status_code == 405 and reply.headers["allow"] == allowed
        assert reply.headers["content-type"] == "application/json" and allowed in reply.json()["error"]
    missing = requests.get(f"{api.url}/v1/nothing", timeout=30)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"
    garbled = requests.post(
        f"{api.url}/v1/generate", data=b"\xff\xfe{", headers={"content-type": "application/json"}, timeout=30
    )
    assert garbled.status_code in (400, 422) and "error" in garbled.json()


def test_openai_images_endpoint(api):
    reply = _post(
        api, "/v1/images/generations", {"prompt": "sneaker", "n": 2, "seed": 5, "response_format": "b64_json"}
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert abs(body["created"] - time.time()) < 600
    assert [(d["revised_prompt"], d["seed"]) for d in body["data"]] == [("Sneaker", 5), ("Sneaker", 6)]
    assert _png(body["data"][0]["b64_json"]).shape == (32, 32, 3)
    # The same images as our own endpoint, by class name or id.
    ours = _post(api, "/v1/generate", {"class_id": 7, "count": 2, "seed": 5}).json()
    assert [d["b64_json"] for d in body["data"]] == [i["png"] for i in ours["images"]]
    by_id = _post(
        api, "/v1/images/generations", {"prompt": "7", "seed": 5, "model": "tiny-fashion", "size": "32x32"}
    )
    assert by_id.json()["data"][0]["b64_json"] == body["data"][0]["b64_json"]

    def refused(body, param, code, text, status=400):
        reply = _post(api, "/v1/images/generations", body)
        error = reply.json()["error"]
        assert reply.status_code == status, reply.text
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code), error
        assert text in error["message"], error

    refused(
        {"prompt": "sneaker", "response_format": "url"},
        "response_format",
        "unsupported_value",
        "use 'b64_json'",
    )
    refused({"prompt": "sneakers"}, "prompt", "invalid_value", "'Sneaker'")
    refused({"prompt": "bag", "size": "64x64"}, "size", "invalid_value", "32x32")
    refused({"prompt": "bag", "n": 3}, "n", "invalid_value", "at most 2")
    refused({"prompt": "bag", "model": "dall-e-3"}, "model", "model_not_found", "tiny-fashion")
    refused({"n": 1}, "prompt", "missing_required_parameter", "prompt")
    refused({"prompt": "bag", "steps": 9}, "steps", "invalid_value", "at most 4")
    refused({"prompt": "bag", "user": "x" * 300_000}, None, "request_too_large", "at most 262144 bytes", 413)
    garbled = requests.post(
        f"{api.url}/v1/images/generations", data=b'{"prompt": ', headers={"content-type": "application/json"},
        timeout=30,
    )  # fmt: skip
    assert garbled.status_code == 400 and "malformed JSON" in garbled.json()["error"]["message"]


def test_streamed_generate_and_inpaint(api):
    body = {"class_ids": [3, 8], "seed": 11, "steps": 4}
    plain = _post(api, "/v1/generate", body).json()
    reply = _post(api, "/v1/generate", {**body, "stream": True, "previews": "images"}, stream=True)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = sse_events(reply)
    names = [name for name, _ in events]
    assert names == ["step"] * 4 + ["result"], names
    masked = [sum(map(sum, step["images"][0]["masked"])) for _, step in events[:4]]
    assert masked[0] > 0 and masked[-1] == 0 and masked == sorted(masked, reverse=True)
    assert [step["step"] for _, step in events[:4]] == [1, 2, 3, 4]
    assert _png(events[0][1]["images"][1]["png"]).shape == (32, 32, 3)
    result = events[-1][1]
    assert [i["png"] for i in result["images"]] == [i["png"] for i in plain["images"]]  # same images
    # Without image previews a step carries the token grid only; an invalid request is refused before
    # any stream starts.
    tokens_only = sse_events(_post(api, "/v1/generate", {**body, "stream": True}, stream=True))
    assert tokens_only[0][1]["images"][0]["png"] is None
    assert np.array(tokens_only[0][1]["images"][0]["tokens"]).shape == (8, 8)
    bad = _post(api, "/v1/generate", {"class_id": 12, "stream": True})
    assert bad.status_code == 422 and "this model has 10 classes" in bad.json()["error"]

    image = base64.b64encode(_png_bytes(api.models.images[4])).decode()
    edit = {"image": image, "box": {"top": 8, "left": 8, "height": 8, "width": 8}, "class_id": 1, "seed": 2}
    plain_edit = _post(api, "/v1/inpaint", edit).json()
    streamed = sse_events(_post(api, "/v1/inpaint", {**edit, "stream": True}, stream=True))
    assert [name for name, _ in streamed][-1] == "result" and len(streamed) >= 2
    assert streamed[-1][1]["images"][0]["png"] == plain_edit["images"][0]["png"]
    # Only the region (tokens 1..4 × 1..4: the box widened by the margin) is ever masked.
    outside = np.ones((8, 8), dtype=bool)
    outside[1:5, 1:5] = False
    for _, step in streamed[:-1]:
        assert not np.array(step["images"][0]["masked"])[outside].any()


def _png_bytes(image: np.ndarray) -> bytes:
    from pipeline.images import encode_png

    return encode_png(image)


def test_health_and_models(api):
    assert requests.get(f"{api.url}/v1/health", timeout=30).json() == {
        "status": "ok",
        "model": "tiny-fashion",
    }
    (card,) = requests.get(f"{api.url}/v1/models", timeout=30).json()["data"]
    assert (card["id"], card["object"]) == ("tiny-fashion", "model")
    model = requests.get(f"{api.url}/v1/models/tiny-fashion", timeout=30).json()
    assert model["class_names"] == NAMES and model["limits"]["max_steps"] == 4
