"""The v2 family end to end on CPU: a LlamaGen-VQ tokenizer tokenizes real images with the Ray job, a
tiny Halton transformer trains on them on 2 gloo workers with ZeRO-2, samples with the Halton order,
and the Serve app answers a request; the jobs refuse mixed families with clear errors.
"""

from __future__ import annotations

import dataclasses
import socket

import numpy as np
import pytest
import requests
import torch

from jobs.train.config import TrainJobConfig
from jobs.train.deepspeed_config import OptimizerSettings
from jobs.train.driver import check_store_matches_model, run_training

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed, pytest.mark.slow]


@pytest.fixture(scope="module")
def llamagen_store(tmp_path_factory, fashion_mnist):
    """A llamagen-tiny-f4 tokenizer (32 px -> 8×8 codes from a 256-entry l2-normalised codebook) and the
    store the Ray tokenization job writes with it from 320 real Fashion-MNIST images."""
    from demo.example_data import balanced_subset, to_rgb, write_image_folder
    from jobs.tokenize import TokenizeOptions, run_tokenize
    from tokenizer import save_vqgan
    from tokenizer.families import build_tokenizer, tokenizer_preset

    images, labels = fashion_mnist
    index = balanced_subset(labels, per_class=32, seed=3)
    root = tmp_path_factory.mktemp("v2")
    torch.manual_seed(0)
    tokenizer = save_vqgan(build_tokenizer(tokenizer_preset("llamagen-tiny-f4")), root / "tokenizer")
    folder = write_image_folder(to_rgb(images[index], size=32), labels[index], root / "images")
    store = str(root / "store")
    options = TokenizeOptions(
        input=str(folder), output=store, tokenizer=str(tokenizer), resolution=32, flip=True, shard_size=80,
        batch_size=80, num_cpus=2, progress=False,
    )  # fmt: skip
    run_tokenize(options)
    return {"store": store, "tokenizer": str(tokenizer), "root": root}


def _config(store: dict, out, **overrides) -> TrainJobConfig:
    base = TrainJobConfig(
        store=store["store"], out=str(out), preset="halton-tiny",
        model_overrides={"codebook_size": 256, "depth": 2, "dropout": 0.0},
        num_workers=2, zero_stage=2, global_batch_size=32, micro_batch_size=16, steps=12,
        checkpoint_every=12, log_every=4, optimizer=OptimizerSettings(lr=2e-3, schedule="cosine-tail"),
        label_smoothing=0.0, sampling={"order": "halton", "schedule": "arccos", "steps": 6, "cfg_weight": 1.0,
                                       "cfg_schedule": "constant"},
        tokenizer=store["tokenizer"], cpus_per_worker=1.0,
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)


def test_store_records_the_tokenizer_family(llamagen_store):
    from pipeline.store import open_token_store

    manifest = open_token_store(llamagen_store["store"]).manifest
    assert manifest.tokenizer["config"]["family"] == "llamagen-vq"
    assert manifest.codebook_size == 256 and tuple(manifest.grid) == (8, 8)


def test_v1_preset_on_a_v2_store_names_the_family_and_the_flag(llamagen_store, tmp_path):
    config = _config(llamagen_store, tmp_path / "run", preset="tiny", model_overrides={"codebook_size": 1024})
    with pytest.raises(ValueError, match=r"made by a llamagen-vq tokenizer.*--codebook-size"):
        check_store_matches_model(config)


def test_tokenize_train_sample_serve_with_the_v2_family(llamagen_store, tmp_path):
    """Train the Halton transformer with ZeRO-2 on the llamagen store, then sample and serve it."""
    import ray

    from generation import MaskGIT
    from jobs.serve.app import start_server, stop_server
    from jobs.serve.schema import ServeOptions
    from transformer import load_transformer

    config = _config(llamagen_store, tmp_path / "run")
    summary = run_training(config)
    model = load_transformer(summary.export_dir)
    assert model.config.family == "halton" and model.config.codebook_size == 256
    assert list((tmp_path / "run").rglob("step-00000012.png")), "no sample grid of the final weights"

    torch.set_num_threads(1)  # as the Serve replica below (num_cpus = 1): the same float sums in the decoder
    pipe = MaskGIT.load(summary.export_dir, llamagen_store["tokenizer"], device="cpu")
    from pipeline.store import open_token_store

    assert pipe.sampling_defaults.order == "halton"
    assert pipe.class_names == open_token_store(llamagen_store["store"]).manifest.class_names
    result = pipe.generate([0, 5, 9], seeds=4, trace=True)
    assert result.images.shape == (3, 32, 32, 3)
    revealed = result.trace.revealed.sum(dim=0)
    assert revealed.tolist() == [64, 64, 64] and result.trace.masks.shape[0] == 6

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        url = start_server(ServeOptions(transformer=summary.export_dir, tokenizer=llamagen_store["tokenizer"],
                                        port=port, max_batch_images=8, max_images_per_request=4))  # fmt: skip
        reply = requests.post(f"{url}/v1/generate", json={"class_ids": [0, 5, 9], "seed": 4}, timeout=120)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["sampling"]["order"] == "halton"
        served = np.stack([np.asarray(_png(item["png"])) for item in body["images"]])
        np.testing.assert_array_equal(served, result.images)
        tokens = requests.post(
            f"{url}/v1/generate", json={"class_ids": [0, 5, 9], "seed": 4, "output": "tokens"}, timeout=120
        ).json()
        np.testing.assert_array_equal([item["tokens"] for item in tokens["images"]], result.tokens.numpy())
    finally:
        stop_server()


def _png(text: str):
    import base64
    import io

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(text))) as image:
        return image.convert("RGB")
