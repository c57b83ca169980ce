"""Evaluators: EfficientNet-Lite0 FID on real Fashion-MNIST, the TF-FID InceptionV3 path and its resize."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from evaluation.features import (
    EfficientNetLite0Features,
    InceptionV3Features,
    build_feature_extractor,
    minmax_stretch,
)
from evaluation.inception import FIDInceptionV3, resize_bilinear_tf1
from evaluation.metrics import frechet_distance


def _fid(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two small feature sets (N < D), exactly, through an N1 x N2 SVD.

    32 images at D = 1280: milliseconds where a 1280 x 1280 square root takes seconds. With centred
    sets A1, A2 the covariances are S_i = A_i^T A_i / (N_i - 1), and the non-zero eigenvalues of S1 S2
    are the squared singular values of A1 A2^T / sqrt((N1 - 1)(N2 - 1)), so Tr sqrtm(S1 S2) is their
    sum (checked against `evaluation.metrics.frechet_distance` below). The library scores against
    stored statistics, never two feature sets, so this shortcut lives with the tests that use it.
    """
    a, b = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    diff = a.mean(0) - b.mean(0)
    a, b = a - a.mean(0), b - b.mean(0)
    scale1, scale2 = len(a) - 1, len(b) - 1
    cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(scale1 * scale2)
    return float(diff @ diff + (a * a).sum() / scale1 + (b * b).sum() / scale2 - 2.0 * cross)


@pytest.mark.parametrize(("n1", "n2"), [(12, 30), (30, 12)])  # fewer samples than D = 40
def test_the_low_rank_fid_equals_the_covariance_route(rng, n1, n2):
    a = rng.normal(size=(n1, 40)) @ rng.normal(size=(40, 40))
    b = rng.normal(loc=0.5, size=(n2, 40)) @ rng.normal(size=(40, 40))
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    assert _fid(a, b) == pytest.approx(frechet_distance(*stats[0], *stats[1], method="eigh"), rel=1e-7)
    assert abs(_fid(a, a)) < 1e-8 * np.trace(np.cov(a, rowvar=False))


def _blur(images: np.ndarray, radius: float) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius))) for im in images]
    )


def _noise(images: np.ndarray, sigma: float, rng) -> np.ndarray:
    return np.clip(images + rng.normal(scale=sigma, size=images.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def efficientnet():
    return EfficientNetLite0Features(device="cpu", batch_size=32)


def test_efficientnet_fid_is_zero_for_a_set_and_grows_with_blur_and_noise(
    efficientnet, fashion_mnist_small, rng
):
    images = fashion_mnist_small[0][:32]
    base = efficientnet(images)
    assert base.features.shape == (32, 1280) and base.logits.shape == (32, 1000)
    assert abs(_fid(base.features, base.features)) < 1e-6

    blurred = [_fid(base.features, efficientnet(_blur(images, r)).features) for r in (0.6, 1.2, 2.5)]
    noised = [_fid(base.features, efficientnet(_noise(images, s, rng)).features) for s in (8, 24, 64)]
    assert 0 < blurred[0] < blurred[1] < blurred[2], blurred
    assert 0 < noised[0] < noised[1] < noised[2], noised


def test_efficientnet_tells_real_classes_apart(efficientnet, fashion_mnist_small):
    # Two Fashion-MNIST classes are farther apart than two halves of one class.
    images, labels = fashion_mnist_small
    features = efficientnet(images[np.isin(labels, [1, 7])]).features
    kept = labels[np.isin(labels, [1, 7])]
    trousers, sneakers = features[kept == 1], features[kept == 7]
    within = np.linalg.norm(trousers[:10].mean(0) - trousers[10:].mean(0))
    between = np.linalg.norm(trousers.mean(0) - sneakers.mean(0))
    assert between > 2 * within


def test_evaluators_are_labelled(efficientnet):
    assert efficientnet.info.name == "efficientnet-lite0"
    assert efficientnet.info.fid_label == "FID-EffLite0 (not comparable with published FID)"
    assert not efficientnet.info.comparable_with_published
    assert efficientnet.info.preprocessing["minmax_stretch"] is False


def test_evaluators_take_only_uint8_rgb(efficientnet):
    with pytest.raises(ValueError, match="uint8"):
        efficientnet(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="unknown evaluator"):
        build_feature_extractor("vgg")


def test_minmax_stretch_maps_each_image_to_the_full_range():
    images = np.stack([np.full((4, 4, 3), 50, np.uint8), np.full((4, 4, 3), 7, np.uint8)])
    images[0, 0, 0, 0], images[0, 1, 1, 1] = 100, 75
    stretched = minmax_stretch(images)
    assert stretched[0].min() == 0 and stretched[0].max() == 255
    assert stretched[0, 1, 1, 1] == 127  # (75 - 50) / 50 * 255 = 127.5, truncated as the reference
    assert (stretched[1] == 0).all()  # a constant image has no range to stretch


def test_resize_bilinear_tf1_matches_tensorflow1_semantics():
    row = torch.tensor([0.0, 10.0, 20.0, 40.0]).view(1, 1, 1, 4).expand(1, 1, 4, 4).contiguous()
    # 2x upsampling: source = i / 2 with no half-pixel offset; the last pixel repeats the border.
    up = resize_bilinear_tf1(row, 8)[0, 0, 0]
    assert up.tolist() == [0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 40.0]
    # 2x downsampling picks every second pixel (source = 2i) instead of averaging pairs.
    assert resize_bilinear_tf1(row, 2)[0, 0, 0].tolist() == [0.0, 20.0]
    assert torch.equal(resize_bilinear_tf1(row, 4), row)
    with pytest.raises(ValueError, match="floating"):
        resize_bilinear_tf1(row.byte(), 8)


@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory, fashion_mnist_small):
    """A randomly initialised TF-FID InceptionV3 saved as a plain state dict, like the released file.

    BatchNorm statistics are calibrated on a few real images (one train-mode pass) so activations stay
    at a usable scale through the 90-odd layers of a random network.
    """
    torch.manual_seed(0)
    network = FIDInceptionV3()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: one pass sets the statistics of that batch
    with torch.no_grad():
        network.train()(torch.from_numpy(fashion_mnist_small[0][-4:]).permute(0, 3, 1, 2))
    network.eval()
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(network.state_dict(), path)
    return path, network


def test_inception_evaluator_loads_a_weights_file_and_gives_pool3_and_unbiased_logits(
    random_inception_file, fashion_mnist_small
):
    path, network = random_inception_file
    state = torch.load(path, weights_only=True)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_5b.branch1x1.conv.weight"].shape == (64, 192, 1, 1)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert state["fc.weight"].shape == (1008, 2048)
    assert sum(p.numel() for p in network.parameters()) == 23_850_960  # torchvision's V3 - aux + 1008-way fc

    extractor = build_feature_extractor("inception", inception_weights=path, device="cpu", batch_size=2)
    assert isinstance(extractor, InceptionV3Features)
    assert extractor.info.fid_label == "FID" and extractor.info.comparable_with_published
    images = fashion_mnist_small[0][:3]
    batch = extractor(images)
    assert batch.features.shape == (3, 2048) and batch.logits.shape == (3, 1008)
    assert 1e-2 < np.abs(batch.features).max() < 1e3  # calibrated weights were loaded, not a fresh init
    with torch.no_grad():
        direct = network(torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(batch.features, direct.pool_features.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        batch.logits, batch.features @ state["fc.weight"].numpy().T, rtol=1e-4, atol=1e-5
    )  # no bias: torch-fidelity's logits_unbiased


def test_inception_evaluator_without_weights_says_which_file_is_needed(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("pt_inception-2015-12-05-6726825d.pth")):
        InceptionV3Features.from_weights(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="--inception-weights"):
        build_feature_extractor("inception")
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="missing keys"):
        InceptionV3Features.from_weights(tmp_path / "wrong.pth")
