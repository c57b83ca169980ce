"""The service as OpenAI's own Python client sees it: models, generations, edits, errors and API keys.

The ingress's FastAPI app runs in this process under uvicorn (no Ray: the same app the Serve
ingress serves, over the same step-level sampler), once open and once with API keys.
"""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
import openai
import pytest
import requests
from PIL import Image
from serve_helpers import local_app, train_tiny_models

from jobs.serve.auth import ENV_VAR, key_digests
from jobs.serve.continuous import ContinuousSampler
from jobs.serve.engine import SamplerEngine
from jobs.serve.ingress import build_http_app
from jobs.serve.schema import ServeOptions
from pipeline.images import encode_png

NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory, fashion_mnist_small):
    images, labels = fashion_mnist_small
    root = tmp_path_factory.mktemp("openai_client")
    trained = train_tiny_models(root, images, labels, steps=30, class_names=NAMES)
    engine = SamplerEngine(trained.transformer, trained.tokenizer, name="tiny-fashion", device="cpu")
    options = ServeOptions(
        transformer=trained.transformer, tokenizer=trained.tokenizer, model_name="tiny-fashion",
        max_batch_images=8, max_images_per_request=4, max_steps=8, max_payload_bytes=256 * 1024,
    )  # fmt: skip
    return SimpleNamespace(engine=engine, options=options, images=images)


def _app(models, digests=()):
    sampler = ContinuousSampler(models.engine, max_rows=16)
    info = {**models.engine.info(), "batching": "continuous"}
    return build_http_app(sampler, info, models.options, api_key_digests=digests)


@pytest.fixture(scope="module")
def url(models):
    with local_app(_app(models)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def _png(image: np.ndarray) -> bytes:
    return encode_png(image)


def _rgba_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(b64: str) -> tuple[np.ndarray, str]:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return np.asarray(image.convert("RGB")), image.format


def test_models_list_and_retrieve(client, url):
    page = client.models.list()
    assert [model.id for model in page.data] == ["tiny-fashion"]
    assert page.data[0].object == "model" and page.data[0].owned_by and page.data[0].created > 0
    model = client.models.retrieve("tiny-fashion").to_dict()
    assert (model["id"], model["image_size"], model["num_classes"]) == ("tiny-fashion", 32, 10)
    assert model["class_names"] == NAMES and model["limits"]["max_steps"] == 8
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-3")
    assert requests.get(f"{url}/v1/models", timeout=30).json()["object"] == "list"


def test_generate_with_openai_optional_fields(client, url):
    # Fields OpenAI's wrappers fill in are accepted; output_format is honoured, the rest ignored.
    reply = client.images.generate(
        model="tiny-fashion", prompt="Sneaker", n=2, size="auto", quality="high", style="vivid",
        background="auto", moderation="low", output_format="webp", output_compression=90,
        response_format="b64_json", user="someone", extra_body={"seed": 5},
    )  # fmt: skip
    assert len(reply.data) == 2 and reply.data[0].revised_prompt == "Sneaker"
    pixels, kind = _pixels(reply.data[0].b64_json)
    assert kind == "WEBP" and pixels.shape == (32, 32, 3)
    # PNG by default: the same images as our own endpoint for the same class and seed.
    plain = client.images.generate(prompt="7", n=2, extra_body={"seed": 5})
    ours = requests.post(f"{url}/v1/generate", json={"class_id": 7, "count": 2, "seed": 5}, timeout=120)
    ours = ours.json()
    assert [d.b64_json for d in plain.data] == [image["png"] for image in ours["images"]]
    jpeg = client.images.generate(prompt="bag", output_format="jpeg", extra_body={"seed": 1, "steps": 2})
    assert _pixels(jpeg.data[0].b64_json)[1] == "JPEG"


def test_edit_regenerates_the_transparent_part_of_the_mask(client, url, models):
    image = models.images[4]  # (32, 32, 3) uint8
    mask = np.full((32, 32, 4), 255, dtype=np.uint8)
    mask[8:16, 8:16, 3] = 0  # transparent: regenerate (tokens 2..3 × 2..3)
    reply = client.images.edit(
        image=("image.png", _png(image), "image/png"), mask=("mask.png", _rgba_png(mask), "image/png"),
        prompt="Bag", n=2, size="32x32", extra_body={"seed": 3},
    )  # fmt: skip
    edited = [_pixels(d.b64_json)[0] for d in reply.data]
    assert len(edited) == 2 and reply.data[0].revised_prompt == "Bag"
    for picture in edited:  # far from the region the uploaded pixels come back exactly
        np.testing.assert_array_equal(picture[24:], image[24:])
    # The same inpainting as /v1/inpaint with a mask that is light where OpenAI's is transparent.
    light = np.zeros((32, 32, 3), dtype=np.uint8)
    light[8:16, 8:16] = 255
    body = {"image": base64.b64encode(_png(image)).decode(), "mask": base64.b64encode(_png(light)).decode(),
            "class_id": 8, "count": 2, "seed": 3}  # fmt: skip
    ours = requests.post(f"{url}/v1/inpaint", json=body, timeout=120).json()
    assert [d.b64_json for d in reply.data] == [item["png"] for item in ours["images"]]
    # Without a mask the image's own transparent pixels are regenerated.
    rgba = np.concatenate([image, mask[..., 3:]], axis=2)
    alone = client.images.edit(image=("rgba.png", _rgba_png(rgba), "image/png"), prompt="8",
                               extra_body={"seed": 3})  # fmt: skip
    assert _pixels(alone.data[0].b64_json)[0].shape == (32, 32, 3)


def test_errors_use_openai_shape(client, url, models):
    def shape(error: openai.APIStatusError) -> dict:
        body = error.response.json()["error"]
        assert set(body) == {"message", "type", "param", "code"}, body
        return body

    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="bag", size="64x64")
    assert shape(refused.value)["param"] == "size"
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="sneakers")
    assert shape(refused.value)["param"] == "prompt" and "'Sneaker'" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:  # an opaque image and no mask: nothing to edit
        client.images.edit(image=("image.png", _png(models.images[0]), "image/png"), prompt="bag")
    assert shape(refused.value)["param"] == "image"
    with pytest.raises(openai.NotFoundError) as missing:
        client.images.create_variation(image=("image.png", _png(models.images[0]), "image/png"))
    assert "not supported" in shape(missing.value)["message"]
    not_allowed = requests.get(f"{url}/v1/images/generations", timeout=30)
    assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST"
    assert set(not_allowed.json()["error"]) == {"message", "type", "param", "code"}
    garbled = requests.post(f"{url}/v1/images/generations", data=b'{"prompt": ',
                            headers={"content-type": "application/json"}, timeout=30)  # fmt: skip
    assert garbled.status_code == 400 and garbled.json()["error"]["param"] is None
    assert "malformed JSON" in garbled.json()["error"]["message"]


def test_api_keys(models, tmp_path, monkeypatch):
    keys = tmp_path / "keys.txt"
    keys.write_text("# one key per line\nsk-test-first\n\n")
    monkeypatch.setenv(ENV_VAR, "sk-test-second, ")
    digests = key_digests(str(keys))
    assert len(digests) == 2 and "sk-test" not in "".join(digests)
    with local_app(_app(models, digests)) as base:
        for key in ("sk-test-first", "sk-test-second"):
            keyed = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)
            assert [m.id for m in keyed.models.list().data] == ["tiny-fashion"]
        reply = keyed.images.generate(prompt="bag", extra_body={"seed": 1, "steps": 2})
        assert len(reply.data) == 1
        wrong = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test-wrong", max_retries=0, timeout=120)
        with pytest.raises(openai.AuthenticationError) as refused:
            wrong.images.generate(prompt="bag")
        body = refused.value.response.json()["error"]
        assert (body["code"], body["param"]) == ("invalid_api_key", None) and "sk-test" not in str(body)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        missing = requests.post(f"{base}/v1/generate", json={"class_id": 1}, timeout=30)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "requires an API key" in missing.json()["error"]  # our routes keep our error shape
        assert requests.get(f"{base}/v1/health", timeout=30).status_code == 200  # probes need no key
        assert requests.get(f"{base}/", timeout=30).status_code == 200  # nor does the page
        document = requests.get(f"{base}/openapi.json", timeout=30).json()
        assert document["paths"]["/v1/generate"]["post"]["security"] == [{"apiKey": []}]
