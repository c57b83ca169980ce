"""The sampling service on a tiny model trained here on real Fashion-MNIST tokens.

First the engine in-process (batching must not change results; a bad job fails alone), then the
whole service over real HTTP on 127.0.0.1 (Ray Serve in a local Ray started by the fixture):
generate and inpaint, same seed alone or batched, a table of bad requests, and a load run.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import yaml
from PIL import Image
from serve_helpers import free_port, train_tiny_models

from jobs.serve.engine import JobFailure, SampleJob, SamplerEngine
from pipeline.images import encode_png
from transformer import SamplingConfig

TRAIN_STEPS = 150
SAMPLING = SamplingConfig(steps=4, gumbel_temperature=1.0, cfg_weight=1.0)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, fashion_mnist_small):
    """A random-init tiny VQGAN and a tiny transformer trained briefly on its tokens of 200 real
    Fashion-MNIST images, saved in our folder formats (tests/serve_helpers.py)."""
    images, labels = fashion_mnist_small  # (200, 32, 32, 3) uint8
    root = tmp_path_factory.mktemp("serve_models")
    models = train_tiny_models(root, images, labels, steps=TRAIN_STEPS, sampling=SAMPLING)
    assert np.mean(models.losses[-20:]) < 0.5 * np.mean(models.losses[:5]), "the fixture model did not train"
    return models


@pytest.fixture(scope="module")
def engine(tiny_models):
    return SamplerEngine(tiny_models.transformer, tiny_models.tokenizer, name="tiny", device="cpu")


def _generate(class_ids, seeds, output="png", sampling=SAMPLING):
    return SampleJob("generate", tuple(class_ids), tuple(seeds), sampling, output)


def test_engine_results_do_not_depend_on_batching(engine):
    target_png, target_tokens = _generate([3, 7], [11, 12]), _generate([3, 7], [11, 12], "tokens")
    alone_png = engine.run([target_png])[0]
    alone_tokens = engine.run([target_tokens])[0]
    assert alone_png.batch_images == 2 and len(alone_png.pngs) == 2
    batch = [
        _generate([1, 2, 5], [100, 101, 102]),
        target_png,
        _generate([0], [5], sampling=replace(SAMPLING, steps=3)),  # other knobs: its own call
        target_tokens,
    ]
    outputs = engine.run(batch)
    assert [o.batch_images for o in outputs] == [7, 7, 1, 7]
    assert outputs[1].pngs == alone_png.pngs  # byte-identical PNGs
    np.testing.assert_array_equal(outputs[3].tokens, alone_tokens.tokens)
    assert outputs[3].tokens.shape == (2, 8, 8) and outputs[3].tokens.max() < 256
    for png in outputs[0].pngs:
        with Image.open(io.BytesIO(png)) as image:
            assert (image.size, image.mode) == ((32, 32), "RGB")
    # Seeds matter: the same classes with other seeds give other tokens.
    other = engine.run([_generate([3, 7], [13, 14], "tokens")])[0]
    assert not np.array_equal(other.tokens, alone_tokens.tokens)


def test_engine_inpaint_keeps_known_tokens_and_far_pixels(engine, tiny_models):
    image = tiny_models.images[0]  # (32, 32, 3) uint8
    region = np.zeros((8, 8), dtype=bool)
    region[2:6, 3:7] = True  # pixels 8..23 × 12..27
    job = SampleJob("inpaint", (4, 4), (7, 8), SAMPLING, "tokens", image, region)
    tokens = engine.run([job])[0].tokens
    known = engine.pipe.encode(image[None])[0].cpu().numpy()
    np.testing.assert_array_equal(tokens[:, ~region], np.broadcast_to(known[~region], (2, (~region).sum())))
    pngs = engine.run([replace(job, output="png")])[0].pngs
    for png in pngs:
        with Image.open(io.BytesIO(png)) as opened:
            edited = np.asarray(opened.convert("RGB"))
        # Far from the region the blend weight is 0: the uploaded pixels come back exactly.
        np.testing.assert_array_equal(edited[:4], image[:4])
        np.testing.assert_array_equal(edited[:, :8], image[:, :8])
        assert not np.array_equal(edited[8:24, 12:28], image[8:24, 12:28])


def test_engine_bf16_autocast_gives_valid_images(tiny_models):
    engine = SamplerEngine(tiny_models.transformer, tiny_models.tokenizer, device="cpu", autocast_bf16=True)
    output = engine.run([_generate([0, 9], [1, 2])])[0]
    assert engine.info()["autocast_bf16"] is True
    for png in output.pngs:
        with Image.open(io.BytesIO(png)) as image:
            assert (image.size, image.mode) == ((32, 32), "RGB")


def test_engine_bad_job_fails_alone(engine):
    good = _generate([1], [3], "tokens")
    bad = _generate([1, 12], [4, 5], "tokens")  # class 12 does not exist (the ingress checks first)
    outputs = engine.run([good, bad])
    assert isinstance(outputs[1], JobFailure) and outputs[1].client_error
    assert "class ids must be in [0, 10)" in outputs[1].message
    np.testing.assert_array_equal(outputs[0].tokens, engine.run([good])[0].tokens)


# ---------------------------------------------------------------------------------------------------
# Over HTTP


@pytest.fixture(scope="module")
def server(tiny_models, s3_server):
    """The service on 127.0.0.1 via `start_server`, in a local Ray cluster of this process, reading both
    models from s3:// with credentials only in the replicas' AWS environment (as on a real cluster)."""
    import fsspec
    import ray

    from jobs.serve.app import start_server, stop_server
    from jobs.serve.schema import ServeOptions

    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    urls = {}
    for name in ("transformer", "tokenizer"):
        urls[name] = s3_server.url("serve", name)
        fs.put(getattr(tiny_models, name) + "/", urls[name].removeprefix("s3://"), recursive=True)
    saved_env = {key: os.environ.get(key) for key in s3_server.env}
    os.environ.update(s3_server.env)  # inherited by the Ray workers this process starts
    temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths must stay short
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        _temp_dir=temp_dir,
        logging_level=logging.WARNING,
    )
    options = ServeOptions(
        transformer=urls["transformer"],
        tokenizer=urls["tokenizer"],
        model_name="tiny-fashion",
        port=free_port(),
        max_batch_images=32,
        batch_wait_timeout_s=0.1,
        max_images_per_request=8,
        max_steps=16,
        max_payload_bytes=256 * 1024,
        max_image_side=512,
    )
    try:
        url = start_server(options)
        yield SimpleNamespace(url=url, options=options, models=tiny_models)
    finally:
        stop_server()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _post(server, route, body, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}{route}", json=body, timeout=120, **kwargs)


def _png_b64(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode()


def _decode_png(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.ray
def test_generate_returns_images_in_order(server):
    reply = _post(server, "/v1/generate", {"class_ids": [4, 0, 9], "seed": 21})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "tiny-fashion" and body["seed"] == 21
    assert body["sampling"] == SAMPLING.to_dict()  # the stored defaults
    assert [(i["index"], i["class_id"], i["seed"]) for i in body["images"]] == [
        (0, 4, 21),
        (1, 0, 22),
        (2, 9, 23),
    ]
    for item in body["images"]:
        assert _decode_png(item["png"]).shape == (32, 32, 3) and item["tokens"] is None
    tokens = _post(server, "/v1/generate", {"class_id": 2, "count": 2, "output": "tokens", "steps": 3}).json()
    assert tokens["sampling"]["steps"] == 3 and isinstance(tokens["seed"], int)  # seed drawn and returned
    grids = np.array([i["tokens"] for i in tokens["images"]])
    assert grids.shape == (2, 8, 8) and grids.min() >= 0 and grids.max() < 256


@pytest.mark.ray
def test_same_seed_same_images_alone_or_batched(server):
    target = {"class_ids": [3, 7], "seed": 1234}
    alone = _post(server, "/v1/generate", target).json()
    alone_tokens = _post(server, "/v1/generate", {**target, "output": "tokens"}).json()
    assert alone["batch_images"] == 2
    for _attempt in range(4):  # concurrent requests share a batch unless the machine stalls them apart
        bodies = [{"class_id": c, "count": 2, "seed": 50 + c} for c in range(6)]
        bodies[2:2] = [target, {**target, "output": "tokens"}]
        with ThreadPoolExecutor(len(bodies)) as pool:
            replies = list(pool.map(lambda body: _post(server, "/v1/generate", body).json(), bodies))
        batched, batched_tokens = replies[2], replies[3]
        if batched["batch_images"] > 2 and batched_tokens["batch_images"] > 2:
            break
    assert batched["batch_images"] > 2 and batched_tokens["batch_images"] > 2, "requests were never batched"
    assert [i["png"] for i in batched["images"]] == [i["png"] for i in alone["images"]]
    assert [i["tokens"] for i in batched_tokens["images"]] == [i["tokens"] for i in alone_tokens["images"]]


@pytest.mark.ray
def test_inpaint_box_and_mask(server, engine):
    image = server.models.images[5]
    box_reply = _post(
        server,
        "/v1/inpaint",
        {"image": _png_b64(image), "box": {"top": 8, "left": 8, "height": 8, "width": 8}, "class_id": 2,
         "count": 2, "seed": 9},
    )  # fmt: skip
    assert box_reply.status_code == 200, box_reply.text
    edited = [_decode_png(i["png"]) for i in box_reply.json()["images"]]
    assert len(edited) == 2
    for picture in edited:  # margin 1: tokens 1..4 (pixels 4..19) regenerated; rows 24+ untouched
        assert picture.shape == (32, 32, 3)
        np.testing.assert_array_equal(picture[24:], image[24:])
    mask = np.zeros((32, 32, 3), dtype=np.uint8)
    mask[20:28, 4:12] = 255
    mask_reply = _post(
        server,
        "/v1/inpaint",
        {"image": _png_b64(image), "mask": _png_b64(mask), "class_id": 7, "output": "tokens"},
    )
    assert mask_reply.status_code == 200, mask_reply.text
    grid = np.array(mask_reply.json()["images"][0]["tokens"])
    assert grid.shape == (8, 8)
    known = engine.pipe.encode(image[None])[0].cpu().numpy()
    outside = np.ones((8, 8), dtype=bool)
    outside[5:7, 1:3] = False
    np.testing.assert_array_equal(grid[outside], known[outside])


def _tiles(grid: np.ndarray, count: int, *, columns: int, size: int = 32, pad: int = 2) -> list[np.ndarray]:
    """The `count` tiles of an `image_grid` picture, row by row."""
    tiles = []
    for index in range(count):
        row, col = divmod(index, columns)
        top, left = pad + row * (size + pad), pad + col * (size + pad)
        tiles.append(grid[top : top + size, left : left + size])
    return tiles


@pytest.mark.ray
def test_pipeline_cli_and_http_give_identical_images(server, tmp_path):
    """The same seeds give the same pixels through `MaskGIT`, `maskgit sample` and the HTTP API
    (which reads its models from S3): generation and inpainting."""
    import torch

    from generation import MaskGIT
    from jobs.cli import main as cli_main

    # Same device and thread count as the replica (Ray gives it num_cpus = 1 thread): float sums in the
    # decoder's convolutions are ordered by the thread split, and a pixel could differ by one level.
    # (conftest puts the suite's thread count back after the test.)
    torch.set_num_threads(1)
    models = server.models
    pipe = MaskGIT.load(models.transformer, models.tokenizer, device="cpu")
    direct = pipe.generate([4, 0, 9], seeds=21).images
    out = tmp_path / "grid.png"
    models_args = ["--transformer", models.transformer, "--tokenizer", models.tokenizer]
    cli = ["sample", *models_args, "--classes", "4", "0", "9", "--per-class", "1", "--seed", "21"]
    assert cli_main([*cli, "--out", str(out)]) == 0
    with Image.open(out) as picture:
        from_cli = _tiles(np.asarray(picture.convert("RGB")), 3, columns=1)
    reply = _post(server, "/v1/generate", {"class_ids": [4, 0, 9], "seed": 21})
    assert reply.status_code == 200, reply.text
    from_http = [_decode_png(item["png"]) for item in reply.json()["images"]]
    for index in range(3):
        np.testing.assert_array_equal(from_cli[index], direct[index])
        np.testing.assert_array_equal(from_http[index], direct[index])

    image = models.images[5]
    edit = pipe.inpaint(image, class_id=2, box=(8, 8, 8, 8), count=2, seeds=9).images
    (tmp_path / "input.png").write_bytes(encode_png(image))
    edit_cli = [
        "sample", *models_args, "--image", str(tmp_path / "input.png"), "--box", "8", "8", "8", "8",
        "--class-id", "2", "--per-class", "2", "--seed", "9", "--out", str(tmp_path / "edit.png"),
    ]  # fmt: skip
    assert cli_main(edit_cli) == 0
    with Image.open(tmp_path / "edit.png") as picture:
        original, *edited_cli = _tiles(np.asarray(picture.convert("RGB")), 3, columns=3)
    np.testing.assert_array_equal(original, image)
    body = {"image": _png_b64(image), "box": {"top": 8, "left": 8, "height": 8, "width": 8}, "class_id": 2,
            "count": 2, "seed": 9}  # fmt: skip
    reply = _post(server, "/v1/inpaint", body)
    assert reply.status_code == 200, reply.text
    edited_http = [_decode_png(item["png"]) for item in reply.json()["images"]]
    for index in range(2):
        np.testing.assert_array_equal(edited_cli[index], edit[index])
        np.testing.assert_array_equal(edited_http[index], edit[index])
    assert not np.array_equal(edit[0], image)


def _bad_requests(server) -> list[tuple[str, str, object, int, str]]:
    """(name, route, body, expected status, text the error must contain)."""
    image = server.models.images[0]
    png = _png_b64(image)
    box = {"top": 0, "left": 0, "height": 8, "width": 8}
    gen, inp = "/v1/generate", "/v1/inpaint"

    def edit(**fields):
        return {"image": png, "box": box, "class_id": 0, **fields}

    return [
        ("malformed JSON", gen, b'{"class_id": 1,', 400, "malformed JSON"),
        ("JSON list", gen, [1, 2], 422, "must be a JSON object"),
        ("unknown field", gen, {"class_id": 1, "colour": "red"}, 422, "unknown field 'colour'"),
        ("class out of range", gen, {"class_ids": [0, 10]}, 422, "this model has 10 classes"),
        ("negative class", gen, {"class_id": -1}, 422, "out of range"),
        ("too many steps", gen, {"class_id": 1, "steps": 1000}, 422, "at most 16"),
        ("zero steps", gen, {"class_id": 1, "steps": 0}, 422, "steps"),
        ("zero temperature", gen, {"class_id": 1, "temperature": 0}, 422, "temperature"),
        ("unknown schedule", gen, {"class_id": 1, "schedule": "zigzag"}, 422, "unknown masking schedule"),
        ("too many images", gen, {"class_id": 1, "count": 100}, 422, "at most 8"),
        ("no classes", gen, {"seed": 1}, 422, "no classes: give class_ids"),
        ("string class", gen, {"class_id": "3"}, 422, "class_id"),
        ("float seed", gen, {"class_id": 3, "seed": 1.5}, 422, "seed"),
        ("bad output", gen, {"class_id": 3, "output": "jpeg"}, 422, "output"),
        ("bad base64", inp, edit(image="%%%"), 422, "not valid base64"),
        ("not an image", inp, edit(image=base64.b64encode(b"hello").decode()), 422, "not an image"),
        ("wrong size", inp, edit(image=_png_b64(np.zeros((64, 64, 3), np.uint8))), 422, "works on 32×32"),
        ("side over limit", inp, edit(image=_png_b64(np.zeros((600, 600, 3), np.uint8))), 422, "up to 512"),
        ("box outside", inp, edit(box={**box, "top": 32}), 422, "box.top"),  # past the border: clipped
        ("box and mask", inp, edit(mask=png), 422, "either box or mask"),
        (
            "empty mask",
            inp,
            {**edit(mask=_png_b64(np.zeros_like(image))), "box": None},
            422,
            "selects no pixels",
        ),
        ("inpaint class", inp, edit(class_id=11), 422, "out of range"),
        ("payload too large", inp, edit(image="A" * 300_000), 413, "at most 262144 bytes"),
    ]


@pytest.mark.ray
def test_bad_requests_get_clear_4xx_and_service_keeps_serving(server):
    table = _bad_requests(server)
    assert len(table) >= 10
    failures = []
    for name, route, body, status, text in table:
        if isinstance(body, bytes):
            reply = requests.post(
                f"{server.url}{route}", data=body, headers={"content-type": "application/json"}, timeout=60
            )
        else:
            reply = _post(server, route, body)
        error = (
            reply.json().get("error", "") if reply.headers.get("content-type") == "application/json" else ""
        )
        if reply.status_code != status or text not in error:
            failures.append(f"{name}: {reply.status_code} {reply.text[:300]}")
        # Nothing names a server-side path.
        assert str(server.models.root) not in reply.text
    assert not failures, "\n".join(failures)

    def chunks():  # a body without Content-Length is cut off while it streams in
        yield b'{"class_id": 1, "note": "'
        for _ in range(40):
            yield b"A" * 10_000
        yield b'"}'

    streamed = requests.post(
        f"{server.url}/v1/generate", data=chunks(), headers={"content-type": "application/json"}, timeout=60
    )
    assert streamed.status_code == 413 and "at most 262144 bytes" in streamed.json()["error"]
    missing = requests.get(f"{server.url}/v1/nothing", timeout=30)
    assert missing.status_code == 404 and "/docs" in missing.json()["error"]
    assert requests.get(f"{server.url}/v1/generate", timeout=30).status_code == 405
    assert _post(server, "/v1/generate", {"class_id": 1}).status_code == 200  # still serving


@pytest.mark.ray
def test_health_models_and_docs(server):
    health = requests.get(f"{server.url}/v1/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    listed = requests.get(f"{server.url}/v1/models", timeout=30)
    assert listed.status_code == 200 and [m["id"] for m in listed.json()["data"]] == ["tiny-fashion"]
    models = requests.get(f"{server.url}/v1/models/tiny-fashion", timeout=30)
    model = models.json()
    assert (model["name"], model["image_size"], model["num_classes"]) == ("tiny-fashion", 32, 10)
    assert model["sampling_defaults"] == SAMPLING.to_dict()
    assert model["limits"]["max_steps"] == 16 and model["max_batch_images"] == 32
    assert str(server.models.root) not in models.text
    schema = requests.get(f"{server.url}/openapi.json", timeout=30).json()
    assert {"/v1/generate", "/v1/inpaint", "/v1/health", "/v1/models"} <= set(schema["paths"])
    assert requests.get(f"{server.url}/docs", timeout=30).status_code == 200


@pytest.mark.ray
@pytest.mark.slow
def test_load_200_requests_at_concurrency_32(server):
    image = _png_b64(server.models.images[3])
    bodies = []
    for index in range(200):
        if index % 10 == 9:
            box = {"top": 8, "left": 8, "height": 16, "width": 16}
            bodies.append(
                ("/v1/inpaint", {"image": image, "box": box, "class_id": index % 10, "seed": index})
            )
        else:
            bodies.append(("/v1/generate", {"class_id": index % 10, "count": 1 + index % 2, "seed": index}))

    def send(item):
        route, body = item
        try:
            reply = _post(server, route, body)
            return reply.status_code, reply.json().get("batch_images", 0)
        except requests.RequestException as error:
            return repr(error), 0

    start = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(send, bodies))
    elapsed = time.monotonic() - start
    errors = [status for status, _ in results if status != 200]
    assert not errors, f"{len(errors)} errors: {errors[:5]}"
    batch_sizes = [size for _, size in results]
    assert max(batch_sizes) > 2, "load never produced a merged batch"
    print(f"200 requests in {elapsed:.1f} s; largest sampler batch {max(batch_sizes)} images")


@pytest.mark.ray
@pytest.mark.slow
def test_serve_run_with_the_config_file(tiny_models, tmp_path):
    """`serve run jobs/serve/config.yaml` (paths and port edited) serves a generate request."""
    document = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "jobs" / "serve" / "config.yaml").read_text()
    )
    port = free_port()
    document["http_options"]["port"] = port
    document["applications"][0]["args"].update(
        transformer=tiny_models.transformer, tokenizer=tiny_models.tokenizer
    )
    config_path = tmp_path / "serve.yaml"
    config_path.write_text(yaml.safe_dump(document))
    ray_tmp = tempfile.mkdtemp(prefix="rq", dir="/tmp")
    env = {
        **os.environ,
        "RAY_ADDRESS": "local",
        "RAY_TMPDIR": ray_tmp,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    serve_bin = str(Path(sys.executable).parent / "serve")
    process = subprocess.Popen(
        [serve_bin, "run", str(config_path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline, reply = time.monotonic() + 300, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                reply = requests.post(
                    f"http://127.0.0.1:{port}/v1/generate", json={"class_id": 1}, timeout=30
                )
                if reply.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(2)
        assert reply is not None and reply.status_code == 200, "serve run never answered"
        assert _decode_png(reply.json()["images"][0]["png"]).shape == (32, 32, 3)
    finally:
        process.send_signal(2)  # SIGINT: `serve run` shuts Serve down and its local Ray with it
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _stop_processes_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _stop_processes_under(temp_dir: str) -> None:
    """Terminate leftover Ray processes of the cluster this test started (their command lines name its
    temp dir), by PID; other clusters on the machine are left alone."""
    import psutil

    ours = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                ours.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in ours:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(ours, timeout=15)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
