"""VQGAN model: shapes, round trips, parity with an independent re-statement of taming, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokenizer.config import PRESETS, VQGANConfig, preset
from tokenizer.vqgan import VQGAN, check_images


@pytest.fixture(scope="module")
def tiny() -> VQGAN:
    torch.manual_seed(0)
    return VQGAN(preset("tiny-f4")).eval()


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=generator) * 2 - 1


# --- config ---------------------------------------------------------------------------------------


def test_reference_preset_is_taming_f16_1024():
    config = PRESETS["imagenet-f16-1024"]
    assert config == VQGANConfig()
    assert (config.ch, config.ch_mult, config.num_res_blocks, config.attn_resolutions) == (
        128,
        (1, 1, 2, 2, 4),
        2,
        (16,),
    )
    assert (config.codebook_size, config.embed_dim, config.downsample_factor) == (1024, 256, 16)
    assert config.grid_shape(256, 256) == (16, 16) and config.grid_shape(512, 512) == (32, 32)
    assert preset("tiny-f4").downsample_factor == 4 and preset("tiny-f4").grid_shape(32, 32) == (8, 8)
    assert preset("small-f8").downsample_factor == 8


def test_config_dict_round_trip_and_errors():
    for config in PRESETS.values():
        data = config.to_dict()
        assert isinstance(data["ch_mult"], list)
        assert VQGANConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="codebook_sise"):
        VQGANConfig.from_dict({"codebook_sise": 10})
    with pytest.raises(ValueError, match="norm_groups"):
        VQGANConfig(ch=40)  # 40 channels cannot form 32 groups
    with pytest.raises(ValueError, match="resolution"):
        VQGANConfig(resolution=200)  # not a multiple of 16
    with pytest.raises(ValueError, match="tiny-f4"):
        preset("nope")
    with pytest.raises(ValueError, match="multiple"):
        preset("tiny-f4").grid_shape(30, 32)


# --- shapes and round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(32, 32), (32, 48), (16, 64), (64, 64)])
def test_any_size_divisible_by_the_factor(tiny, height, width):
    x = images(2, 3, height, width)
    indices = tiny.encode_to_indices(x)
    assert indices.shape == (2, height // 4, width // 4) and indices.dtype == torch.int64
    assert int(indices.min()) >= 0 and int(indices.max()) < tiny.config.codebook_size
    decoded = tiny.decode_from_indices(indices)
    assert decoded.shape == (2, 3, height, width)


def test_decode_of_encode_is_the_quantised_reconstruction(tiny):
    x = images(3, 3, 32, 40, seed=1)
    with torch.no_grad():
        out = tiny(x)
    assert torch.equal(out.indices, tiny.encode_to_indices(x))
    torch.testing.assert_close(tiny.decode_from_indices(out.indices), out.reconstruction, atol=1e-5, rtol=0)


def test_small_preset_at_a_non_reference_size():
    model = VQGAN(preset("small-f8")).eval()
    x = images(1, 3, 32, 48)
    assert model.encode_to_indices(x).shape == (1, 4, 6)
    assert model(x).reconstruction.shape == x.shape


def test_model_carries_its_config(tiny):
    assert tiny.config is PRESETS["tiny-f4"]


# --- parity with an independent re-statement of taming's computation ---------------------------------


def _gn(x, sd, key, groups):
    return F.group_norm(x, groups, sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-6)


def _conv(x, sd, key, stride=1, padding=None):
    weight = sd[f"{key}.weight"]
    padding = weight.shape[-1] // 2 if padding is None else padding
    return F.conv2d(x, weight, sd[f"{key}.bias"], stride=stride, padding=padding)


def _resnet(x, sd, key, groups):
    h = _conv(F.silu(_gn(x, sd, f"{key}.norm1", groups)), sd, f"{key}.conv1")
    h = _conv(F.silu(_gn(h, sd, f"{key}.norm2", groups)), sd, f"{key}.conv2")
    if f"{key}.nin_shortcut.weight" in sd:
        x = _conv(x, sd, f"{key}.nin_shortcut")
    return x + h


def _attention(x, sd, key, groups):
    # The reference's explicit form: w = softmax(q kᵀ / √C) over H·W, h = v wᵀ.
    b, c, height, width = x.shape
    h = _gn(x, sd, f"{key}.norm", groups)
    q, k, v = (_conv(h, sd, f"{key}.{name}").reshape(b, c, -1) for name in "qkv")
    weights = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) / math.sqrt(c), dim=2)  # (B, HW, HW)
    out = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, height, width)
    return x + _conv(out, sd, f"{key}.proj_out")


def _reference_encode(x, sd, config: VQGANConfig):
    g, resolution = config.norm_groups, config.resolution
    h = _conv(x, sd, "encoder.conv_in")
    for level in range(config.num_resolutions):
        for i in range(config.num_res_blocks):
            h = _resnet(h, sd, f"encoder.down.{level}.block.{i}", g)
            if resolution in config.attn_resolutions:
                h = _attention(h, sd, f"encoder.down.{level}.attn.{i}", g)
        if level != config.num_resolutions - 1:
            padded = F.pad(h, (0, 1, 0, 1))  # taming pads right/bottom only
            h = _conv(padded, sd, f"encoder.down.{level}.downsample.conv", stride=2, padding=0)
            resolution //= 2
    h = _resnet(h, sd, "encoder.mid.block_1", g)
    h = _attention(h, sd, "encoder.mid.attn_1", g)
    h = _resnet(h, sd, "encoder.mid.block_2", g)
    h = _conv(F.silu(_gn(h, sd, "encoder.norm_out", g)), sd, "encoder.conv_out")
    return _conv(h, sd, "quant_conv")


def _reference_decode(z, sd, config: VQGANConfig):
    g, resolution = config.norm_groups, config.resolution // config.downsample_factor
    h = _conv(_conv(z, sd, "post_quant_conv"), sd, "decoder.conv_in")
    h = _resnet(h, sd, "decoder.mid.block_1", g)
    h = _attention(h, sd, "decoder.mid.attn_1", g)
    h = _resnet(h, sd, "decoder.mid.block_2", g)
    for level in reversed(range(config.num_resolutions)):
        for i in range(config.num_res_blocks + 1):
            h = _resnet(h, sd, f"decoder.up.{level}.block.{i}", g)
            if resolution in config.attn_resolutions:
                h = _attention(h, sd, f"decoder.up.{level}.attn.{i}", g)
        if level != 0:
            upsampled = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = _conv(upsampled, sd, f"decoder.up.{level}.upsample.conv")
            resolution *= 2
    return _conv(F.silu(_gn(h, sd, "decoder.norm_out", g)), sd, "decoder.conv_out")


@pytest.mark.parametrize("name", ["tiny-f4", "small-f8"])
def test_forward_matches_an_independent_restatement(name):
    torch.manual_seed(1)
    model = VQGAN(preset(name)).eval()
    with torch.no_grad():  # spread the codebook so that nearest-code choices are not degenerate
        model.quantize.embedding.weight.normal_()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    config = model.config
    x = images(2, 3, config.resolution, config.resolution // 2, seed=3)

    z = _reference_encode(x, sd, config)  # (B, D, h, w)
    flat = z.permute(0, 2, 3, 1).reshape(-1, config.embed_dim)
    codes = sd["quantize.embedding.weight"]
    expected_indices = torch.cdist(flat.double(), codes.double()).argmin(1).reshape(z.shape[0], *z.shape[2:])
    q = codes[expected_indices].permute(0, 3, 1, 2)  # (B, D, h, w)
    expected_reconstruction = _reference_decode(q, sd, config)
    expected_term = torch.mean((q - z) ** 2)

    with torch.no_grad():
        out = model(x)
    assert torch.equal(out.indices, expected_indices)
    torch.testing.assert_close(out.reconstruction, expected_reconstruction, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(out.commitment_loss, expected_term, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.codebook_loss, config.beta * expected_term, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.quantizer_loss, (1 + config.beta) * expected_term, rtol=1e-4, atol=1e-6)


def _grad_norm(loss: torch.Tensor, parameter: torch.Tensor) -> float:
    (grad,) = torch.autograd.grad(loss, parameter, retain_graph=True, allow_unused=True)
    return 0.0 if grad is None else float(grad.abs().sum())


def test_quantizer_gradients_follow_taming_legacy():
    """Codebook term moves only the codes (weight β); commitment term moves only the encoder."""
    model = VQGAN(preset("tiny-f4")).train()
    out = model(images(2, 3, 32, 32))
    codes, encoder = model.quantize.embedding.weight, model.encoder.conv_in.weight
    assert _grad_norm(out.codebook_loss, codes) > 0 and _grad_norm(out.codebook_loss, encoder) == 0
    assert _grad_norm(out.commitment_loss, encoder) > 0 and _grad_norm(out.commitment_loss, codes) == 0
    # Straight-through: the reconstruction reaches the encoder, never the codebook.
    assert _grad_norm(out.reconstruction.sum(), encoder) > 0
    assert _grad_norm(out.reconstruction.sum(), codes) == 0


def test_nearest_codes_stay_fp32_under_bf16_autocast(tiny):
    z = torch.randn(2, tiny.config.embed_dim, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_indices = tiny.quantize.nearest_codes(z)
    assert torch.equal(autocast_indices, tiny.quantize.nearest_codes(z))


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad,match",
    [
        (images(2, 1, 32, 32), r"3 channels.*\(2, 1, 32, 32\)"),
        (images(2, 3, 30, 32), r"30x32.*factor 4"),
        (images(3, 32, 32), r"\(B, 3, H, W\).*\(3, 32, 32\)"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "uint8"),
        (images(1, 3, 32, 32) * 127.5 + 127.5, r"\[-1, 1\].*got values"),
        (torch.full((1, 3, 32, 32), float("nan")), r"\[-1, 1\]"),
    ],
)
def test_bad_images_are_rejected(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny.encode_to_indices(bad)
    with pytest.raises(ValueError, match=match):
        tiny(bad)


def test_small_excursions_beyond_the_range_are_accepted(tiny):
    x = images(1, 3, 32, 32).clamp(-1, 1) * 1.04  # e.g. a decoder output fed back in
    check_images(x, tiny.config)
    assert tiny.encode_to_indices(x).shape == (1, 8, 8)


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.full((1, 8, 8), 256), r"\[0, 256\).*\[256, 256\]"),
        (torch.full((1, 8, 8), -1), r"\[-1, -1\]"),
        (torch.zeros(1, 64, dtype=torch.long), r"\(B, h, w\)"),
        (torch.zeros(1, 8, 8), "integer"),
    ],
)
def test_bad_indices_are_rejected(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny.decode_from_indices(bad)
