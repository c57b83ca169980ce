"""TokenizeBatch without Ray, on real Fashion-MNIST images and a tiny VQGAN saved in our folder format."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from pipeline.images import to_model_input
from pipeline.tokenize import TokenizeBatch, tokenizer_identity


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A seeded random tiny-f4 VQGAN (32 px -> 8x8 tokens, 256 codes) saved with save_vqgan."""
    from tokenizer.checkpoint import save_vqgan
    from tokenizer.config import PRESETS
    from tokenizer.vqgan import VQGAN

    torch.manual_seed(0)
    model = VQGAN(PRESETS["tiny-f4"]).eval()
    return model, str(save_vqgan(model, tmp_path_factory.mktemp("vqgan") / "tiny"))


def direct_tokens(model, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.encode_to_indices(to_model_input(images)).numpy()


def test_tokens_equal_a_direct_encode_and_flip_view_is_the_flipped_image(tiny_tokenizer, fashion_mnist_small):
    model, path = tiny_tokenizer
    images, labels = fashion_mnist_small
    images, labels = images[:40], labels[:40]
    stage = TokenizeBatch(path, flip=True, batch_size=16)
    out = stage({"images": images, "labels": labels, "image_ids": np.arange(40).astype(str)})
    assert set(out) == {"tokens", "labels", "image_ids"}
    tokens = out["tokens"]
    assert tokens.dtype == np.uint16 and tokens.shape == (40, 2, 8, 8)
    np.testing.assert_array_equal(tokens[:, 0], direct_tokens(model, images))
    np.testing.assert_array_equal(tokens[:, 1], direct_tokens(model, images[:, :, ::-1].copy()))
    assert not np.array_equal(tokens[:, 0], tokens[:, 1])  # real garments are not mirror-symmetric in code
    np.testing.assert_array_equal(out["labels"], labels)
    # The forward-pass batch size does not change the result.
    np.testing.assert_array_equal(TokenizeBatch(path, batch_size=7).encode(images)[:, 0], tokens[:, 0])


def test_identity_records_config_and_weights_digest(tiny_tokenizer):
    model, path = tiny_tokenizer
    identity = tokenizer_identity(path)
    assert identity["config"] == model.config.to_dict()
    with open(f"{path}/model.safetensors", "rb") as handle:
        assert identity["weights_sha256"] == hashlib.sha256(handle.read()).hexdigest()


def test_bad_batches_are_named(tiny_tokenizer, fashion_mnist_small):
    _, path = tiny_tokenizer
    stage = TokenizeBatch(path)
    with pytest.raises(ValueError, match="uint8"):
        stage({"images": fashion_mnist_small[0][:2].astype(np.float32)})
    with pytest.raises(ValueError, match="multiple of the downsampling factor"):
        stage.encode(np.zeros((1, 30, 30, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TokenizeBatch(path + "-missing")
    assert stage.encode(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 1, 8, 8)


def test_instances_on_one_node_split_its_cores(tiny_tokenizer):
    # The tokenize job's CPU actors: each takes the node's cores / actors torch threads.
    import os

    _, path = tiny_tokenizer
    before = torch.get_num_threads()
    try:
        TokenizeBatch(path, device="cpu", instances_per_node=2 * (os.cpu_count() or 1))
        assert torch.get_num_threads() == 1
        TokenizeBatch(path, device="cpu", num_threads=2, instances_per_node=64)  # explicit wins
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.s3
def test_tokenizer_is_loaded_from_s3(tiny_tokenizer, s3_server, fashion_mnist_small):
    import fsspec

    model, path = tiny_tokenizer
    url = s3_server.url("tokenizers/tiny")
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    fs.put(path + "/", url + "/", recursive=True)
    stage = TokenizeBatch(url, storage_options=s3_server.storage_options)
    images = fashion_mnist_small[0][:8]
    np.testing.assert_array_equal(stage.encode(images)[:, 0], direct_tokens(model, images))
