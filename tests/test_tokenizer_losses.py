"""Training pieces: perceptual distances, PatchGAN, taming's loss terms, codebook usage, quality report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.images import to_model_input
from tokenizer.codebook import DeadCodeRestarter, usage_from_counts
from tokenizer.config import preset
from tokenizer.discriminator import NLayerDiscriminator
from tokenizer.losses import VQGANLoss, hinge_discriminator_loss
from tokenizer.perceptual import (
    LPIPS_VGG_CHANNELS,
    VGG16_LAYOUT,
    EfficientNetPerceptualLoss,
    build_perceptual_loss,
)
from tokenizer.quality import measure_reconstruction, save_reconstruction_grid
from tokenizer.vqgan import VQGAN, VectorQuantizer


@pytest.fixture(scope="module")
def real_images(fashion_mnist_small) -> torch.Tensor:
    return to_model_input(fashion_mnist_small[0][:8])  # (8, 3, 32, 32) in [-1, 1]


# --- EfficientNet-Lite0 perceptual distance ----------------------------------------------------------


@pytest.fixture(scope="module")
def efficientnet() -> EfficientNetPerceptualLoss:
    return EfficientNetPerceptualLoss()


def test_efficientnet_distance_orders_distortions(efficientnet, real_images):
    x = real_images
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=generator)
    with torch.no_grad():
        same = efficientnet(x, x)
        small = efficientnet(x, (x + 0.05 * noise).clamp(-1, 1))
        large = efficientnet(x, (x + 0.5 * noise).clamp(-1, 1))
        other = efficientnet(x, x.roll(1, dims=0))  # a different garment
    assert same.shape == (8,) and torch.all(same.abs() < 1e-6)
    assert torch.all(small > 0) and torch.all(small < large)
    assert float(small.mean()) < float(other.mean())
    assert torch.all(large <= 4.0)


def test_efficientnet_is_frozen_but_passes_gradients(efficientnet, real_images):
    efficientnet.train()
    assert not efficientnet.training and not efficientnet.net.training
    assert not any(p.requires_grad for p in efficientnet.parameters())
    reconstruction = (real_images * 0.8).requires_grad_(True)
    efficientnet(real_images, reconstruction).sum().backward()
    assert reconstruction.grad is not None and reconstruction.grad.abs().sum() > 0


# --- LPIPS-VGG from local files ----------------------------------------------------------------------


def write_lpips_files(tmp_path) -> tuple[str, str, dict, dict]:
    """A random VGG16 state dict (torchvision layout) and random non-negative LPIPS heads."""
    generator = torch.Generator().manual_seed(0)
    vgg, channels, index = {}, 3, 0
    for width in VGG16_LAYOUT:
        if width == "M":
            index += 1
            continue
        vgg[f"features.{index}.weight"] = (
            torch.randn(width, channels, 3, 3, generator=generator) * (2 / (9 * channels)) ** 0.5
        )
        vgg[f"features.{index}.bias"] = torch.randn(width, generator=generator) * 0.01
        channels, index = width, index + 2
    vgg["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too
    heads = {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator)
        for i, c in enumerate(LPIPS_VGG_CHANNELS)
    }
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "vgg.pth")
    return str(tmp_path / "vgg.pth"), str(tmp_path / "vgg16.pth"), vgg, heads


def reference_lpips(x, y, vgg, heads):
    """LPIPS (Zhang et al.) re-stated: scale, VGG16 relu1_2..relu5_3, unit-normalise, weighted sum."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    a, b = (x - shift) / scale, (y - shift) / scale
    total, index, tap = 0.0, 0, 0
    for position, width in enumerate(VGG16_LAYOUT):
        if width == "M":
            a, b = F.max_pool2d(a, 2), F.max_pool2d(b, 2)
            index += 1
            continue
        weight, bias = vgg[f"features.{index}.weight"], vgg[f"features.{index}.bias"]
        a, b = F.relu(F.conv2d(a, weight, bias, padding=1)), F.relu(F.conv2d(b, weight, bias, padding=1))
        index += 2
        if position + 1 == len(VGG16_LAYOUT) or VGG16_LAYOUT[position + 1] == "M":  # last ReLU of a stage
            na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            weighted = ((na - nb) ** 2 * heads[f"lin{tap}.model.1.weight"].view(1, -1, 1, 1)).sum(1)
            total = total + weighted.mean(dim=(1, 2))
            tap += 1
    return total


def test_lpips_vgg_from_local_files_matches_the_formula(tmp_path, real_images):
    heads_path, vgg_path, vgg, heads = write_lpips_files(tmp_path)
    lpips = build_perceptual_loss("lpips", lpips_weights=heads_path, vgg_weights=vgg_path)
    x, y = real_images[:4], real_images[4:]
    with torch.no_grad():
        distance = lpips(x, y)
        assert torch.all(lpips(x, x).abs() < 1e-6)
    torch.testing.assert_close(distance, reference_lpips(x, y, vgg, heads), rtol=1e-4, atol=1e-6)
    assert torch.all(distance > 0)


def test_lpips_vgg_errors_name_what_is_wrong(tmp_path):
    heads_path, vgg_path, _, heads = write_lpips_files(tmp_path)
    with pytest.raises(ValueError, match=r"--lpips-weights.*--vgg-weights"):
        build_perceptual_loss("lpips")
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        build_perceptual_loss("lpips", lpips_weights=str(tmp_path / "missing.pth"), vgg_weights=vgg_path)
    heads["lin9.model.1.weight"] = heads.pop("lin4.model.1.weight")
    torch.save(heads, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"lin4\.model\.1\.weight.*lin9\.model\.1\.weight"):
        build_perceptual_loss("lpips", lpips_weights=str(tmp_path / "renamed.pth"), vgg_weights=vgg_path)
    (tmp_path / "broken.pth").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"broken\.pth"):
        build_perceptual_loss("lpips", lpips_weights=heads_path, vgg_weights=str(tmp_path / "broken.pth"))
    with pytest.raises(ValueError, match="efficientnet"):
        build_perceptual_loss("vgg")
    assert build_perceptual_loss("none") is None


# --- PatchGAN discriminator --------------------------------------------------------------------------


def test_discriminator_has_taming_layout():
    disc = NLayerDiscriminator()
    shapes = {k: tuple(v.shape) for k, v in disc.state_dict().items()}
    assert shapes["main.0.weight"] == (64, 3, 4, 4) and "main.0.bias" in shapes
    assert shapes["main.2.weight"] == (128, 64, 4, 4) and "main.2.bias" not in shapes
    assert shapes["main.3.running_mean"] == (128,)
    assert shapes["main.5.weight"] == (256, 128, 4, 4)
    assert shapes["main.8.weight"] == (512, 256, 4, 4)
    assert shapes["main.11.weight"] == (1, 512, 4, 4) and shapes["main.11.bias"] == (1,)
    with torch.no_grad():
        assert disc(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # pix2pix's 30×30 patches
        assert NLayerDiscriminator(channels=8)(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 2, 2)


# --- taming's loss terms -----------------------------------------------------------------------------


def test_hinge_loss_by_hand():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # ½(mean(relu(1 − real)) + mean(relu(1 + fake))) = ½((0 + 0.5)/2 + (0 + 1.5)/2)
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx(0.5)


def _loss_setup(disc_start: int, reconstruction: str = "l1"):
    torch.manual_seed(0)
    model = VQGAN(preset("tiny-f4")).train()
    discriminator = NLayerDiscriminator(channels=8)
    calls = []
    discriminator.register_forward_hook(lambda *_: calls.append(1))
    loss = VQGANLoss(
        discriminator, None, disc_start=disc_start, disc_weight=0.8, reconstruction=reconstruction
    )
    return model, loss, calls


def test_generator_loss_before_the_gan_starts(real_images):
    model, loss, calls = _loss_setup(disc_start=10)
    out = model(real_images)
    parts = loss.generator_loss(real_images, out, step=9, last_layer=model.last_decoder_layer)
    expected_rec = (real_images - out.reconstruction).abs().mean()
    torch.testing.assert_close(parts.reconstruction, expected_rec.detach())
    torch.testing.assert_close(parts.total, expected_rec + out.quantizer_loss)
    assert float(parts.gan) == 0 and float(parts.gan_weight) == 0 and not calls
    assert float(loss.discriminator_loss(real_images, out.reconstruction, step=9).total.detach()) == 0

    _, l2_loss, _ = _loss_setup(disc_start=10, reconstruction="l2")
    parts = l2_loss.generator_loss(real_images, out, step=0, last_layer=model.last_decoder_layer)
    torch.testing.assert_close(
        parts.reconstruction, (real_images - out.reconstruction).pow(2).mean().detach()
    )


def test_generator_loss_with_the_adaptive_gan_weight(real_images):
    model, loss, calls = _loss_setup(disc_start=10)
    out = model(real_images)
    parts = loss.generator_loss(real_images, out, step=10, last_layer=model.last_decoder_layer)
    assert calls
    nll = (real_images - out.reconstruction).abs().mean()
    gan = -loss.discriminator(out.reconstruction).mean()
    last = model.last_decoder_layer
    (g_nll,) = torch.autograd.grad(nll, last, retain_graph=True)
    (g_gan,) = torch.autograd.grad(gan, last, retain_graph=True)
    expected_weight = 0.8 * torch.clamp(g_nll.norm() / (g_gan.norm() + 1e-4), 0, 1e4)
    torch.testing.assert_close(parts.gan_weight, expected_weight, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(
        parts.total, nll + expected_weight * gan + out.quantizer_loss, rtol=1e-4, atol=1e-6
    )
    d = loss.discriminator_loss(real_images, out.reconstruction, step=10)
    real_logits = loss.discriminator(real_images)
    torch.testing.assert_close(d.logits_real, real_logits.mean().detach(), rtol=1e-4, atol=1e-6)
    assert float(d.total.detach()) > 0


# --- codebook usage and dead-code restart --------------------------------------------------------------


def test_usage_statistics():
    assert usage_from_counts(torch.full((16,), 5)) == pytest.approx((1.0, 16.0))
    assert usage_from_counts(torch.tensor([0, 9, 0, 0])) == pytest.approx((0.25, 1.0))
    assert usage_from_counts(torch.tensor([3, 3, 0, 0])) == pytest.approx((0.5, 2.0))
    assert usage_from_counts(torch.zeros(4)) == (0.0, 0.0)
    p = torch.tensor([1.0, 3.0]) / 4
    assert usage_from_counts(torch.tensor([1, 3]))[1] == pytest.approx(math.exp(-(p * p.log()).sum().item()))


def test_dead_codes_restart_onto_encoder_outputs():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4, beta=0.25)
    before = quantizer.embedding.weight.detach().clone()
    restarter = DeadCodeRestarter(8, interval=2)
    restarter.observe(torch.tensor([[[0, 1], [2, 2]]]))
    latents = torch.randn(1, 4, 3, 3) * 5  # (B, D, h, w), far from the tiny initial codes
    assert restarter.maybe_restart(1, quantizer, latents) == 0  # not an interval step
    assert torch.equal(quantizer.embedding.weight, before)
    assert restarter.maybe_restart(2, quantizer, latents) == 5
    after = quantizer.embedding.weight.detach()
    assert torch.equal(after[:3], before[:3])  # used codes untouched
    candidates = latents.permute(0, 2, 3, 1).reshape(-1, 4)
    nearest = torch.cdist(after[3:], candidates).min(dim=1).values
    assert torch.all(nearest < 0.2)  # each restarted code sits on an encoder output (plus 1% noise)
    assert int(restarter.counts.sum()) == 0


# --- quality report ------------------------------------------------------------------------------------


def test_measure_reconstruction_and_grid(tmp_path, real_images):
    model = VQGAN(preset("tiny-f4")).train()
    measured = measure_reconstruction(model, real_images, batch_size=3)
    assert model.training  # mode restored
    with torch.no_grad():
        expected = model.eval().decode_from_indices(model.encode_to_indices(real_images)).clamp(-1, 1)
    torch.testing.assert_close(measured.reconstructions, expected)
    mse = float((expected - real_images).pow(2).mean())
    assert measured.report.mse == pytest.approx(mse, rel=1e-5)
    assert measured.report.psnr == pytest.approx(10 * math.log10(4 / mse), rel=1e-5)
    assert measured.report.num_images == 8 and 0 < measured.report.codebook_fraction_used <= 1

    path = save_reconstruction_grid(real_images, measured.reconstructions, tmp_path / "grid.png", columns=4)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (4 * 34 + 2, 4 * 34 + 2, 3)  # 2 pairs of rows (originals, reconstructions)
    first = ((real_images[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    assert np.array_equal(grid[2:34, 2:34], first)
    with pytest.raises(ValueError, match="shape mismatch"):
        save_reconstruction_grid(real_images, real_images[:2], tmp_path / "bad.png")
