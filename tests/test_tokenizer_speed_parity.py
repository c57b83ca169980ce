"""The fast VQGAN path (fused attention, channels-last opt-in) gives the plain reference's tokens.

`benchmarks.taming_baseline.TamingVQGAN` re-states taming's modules as the reference runs them (NCHW,
GroupNorm modules, bmm attention) and is the baseline `benchmarks/bench_tokenizer.py` times; here it
loads the same weights and both tokenize real Fashion-MNIST images. The codebook is built from
encoder latents of other images, so nearest-code choices are close calls that a layout or
attention-kernel change could flip.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.taming_baseline import TamingVQGAN
from tokenizer.config import preset
from tokenizer.vqgan import VQGAN


def _images(fashion_mnist, start: int, count: int, size: int) -> torch.Tensor:
    from demo.example_data import to_rgb

    images, _ = fashion_mnist
    pixels = to_rgb(images[start : start + count], size=size)  # (N, size, size, 3) uint8
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@pytest.mark.parametrize("name,size,count", [("small-f8", 64, 8), ("imagenet-f16-1024", 64, 2)])
def test_fast_path_matches_the_plain_reference_on_real_images(fashion_mnist, name, size, count):
    torch.manual_seed(0)
    model = VQGAN(preset(name)).eval()
    baseline = TamingVQGAN(preset(name)).eval()
    with torch.no_grad():
        # Codes drawn from the latents of other images (plus a little noise): close calls everywhere.
        latents = model.encode_to_latents(_images(fashion_mnist, 1000, count, size))
        pool = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        picks = torch.randint(0, pool.shape[0], (model.config.n_embed,))
        codes = pool[picks] + 0.01 * pool.std() * torch.randn(model.config.n_embed, pool.shape[1])
        model.quantize.embedding.weight.copy_(codes)
    baseline.load_state_dict(model.state_dict())

    images = _images(fashion_mnist, 0, count, size)
    ours, reference = model.encode_to_indices(images), baseline.encode_to_indices(images)
    agreement = float((ours == reference).float().mean())
    assert agreement >= 0.99, f"fp32 token agreement with the plain reference {agreement:.4f} < 0.99"
    assert len(reference.unique()) > 8  # the codebook is really used, not one degenerate code

    decoded, expected = model.decode_from_indices(reference), baseline.decode_from_indices(reference)
    assert decoded.is_contiguous() and decoded.shape == expected.shape
    torch.testing.assert_close(decoded, expected, atol=2e-4, rtol=1e-4)


def test_channels_last_layout_gives_the_same_tokens():
    """The opt-in channels-last layout (the benchmark's lever) computes the same model."""
    torch.manual_seed(0)
    model = VQGAN(preset("tiny-f4")).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    indices = model.encode_to_indices(images)
    decoded = model.decode_from_indices(indices)
    model.to(memory_format=torch.channels_last)
    assert torch.equal(model.encode_to_indices(images.contiguous(memory_format=torch.channels_last)), indices)
    torch.testing.assert_close(model.decode_from_indices(indices), decoded, atol=1e-5, rtol=1e-5)
