"""The generation pipeline object: loading, compatibility checks, generate / inpaint / outpaint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generation import MaskGIT, box_to_token_region, mask_to_token_region, resolve_sampling
from tokenizer import VQGAN, preset, save_vqgan
from transformer import MaskTransformer, SamplingConfig, TransformerConfig, save_transformer

STORED = SamplingConfig(steps=3, gumbel_temperature=1.0, cfg_weight=1.0)
NAMES = tuple(f"class-{i}" for i in range(10))


def _transformer_config(codebook_size: int = 256) -> TransformerConfig:
    return TransformerConfig(
        codebook_size=codebook_size, grid_size=8, num_classes=10, hidden_size=32, depth=2, num_heads=4,
        mlp_size=64, dropout=0.0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation")
    torch.manual_seed(0)
    save_vqgan(VQGAN(preset("tiny-f4")), root / "tokenizer")  # 32 px -> 8×8 tokens, 256 codes
    save_transformer(
        MaskTransformer(_transformer_config()), root / "transformer", sampling=STORED, class_names=NAMES
    )
    return root


@pytest.fixture(scope="module")
def pipe(folders):
    return MaskGIT.load(str(folders / "transformer"), str(folders / "tokenizer"), device="cpu")


def test_load_exposes_sizes_names_and_stored_settings(pipe):
    assert (pipe.image_size, pipe.grid_size, pipe.downsample_factor) == (32, 8, 4)
    assert pipe.num_classes == 10 and pipe.class_names == NAMES
    assert pipe.sampling_defaults == STORED
    info = pipe.info()
    assert info["class_names"] == list(NAMES) and info["sampling_defaults"] == STORED.to_dict()


def test_codebook_mismatch_names_both_sizes(folders, tmp_path):
    save_transformer(MaskTransformer(_transformer_config(codebook_size=512)), tmp_path / "t512")
    with pytest.raises(ValueError, match=r"expects 512 codes but the tokenizer has 256"):
        MaskGIT.load(str(tmp_path / "t512"), str(folders / "tokenizer"), device="cpu")


def test_sampling_resolves_defaults_then_stored_then_request():
    assert resolve_sampling(None) == SamplingConfig()
    assert resolve_sampling(STORED, {"steps": 5, "cfg_weight": None}) == SamplingConfig(
        steps=5, gumbel_temperature=1.0, cfg_weight=1.0
    )
    explicit = SamplingConfig(steps=2)
    assert resolve_sampling(STORED, explicit) is explicit
    with pytest.raises(ValueError, match="unknown sampling setting"):
        resolve_sampling(STORED, {"stepz": 4})
    with pytest.raises(ValueError, match="steps must be"):
        resolve_sampling(STORED, {"steps": 0})


def test_generate_is_seeded_per_image_and_independent_of_batch_size(pipe):
    whole = pipe.generate([1, 2, 3, 4, 5], seeds=10)
    assert whole.images.shape == (5, 32, 32, 3) and whole.images.dtype == np.uint8
    assert whole.tokens.shape == (5, 8, 8) and whole.seeds == (10, 11, 12, 13, 14)
    assert whole.sampling == STORED
    pieces = pipe.generate([1, 2, 3, 4, 5], seeds=[10, 11, 12, 13, 14], batch_size=2)
    np.testing.assert_array_equal(pieces.images, whole.images)
    alone = pipe.generate([4], seeds=[13])
    np.testing.assert_array_equal(alone.images[0], whole.images[3])
    other = pipe.generate([1], seeds=[99])
    assert not torch.equal(other.tokens[0], whole.tokens[0])


def test_generate_overrides_and_trace(pipe):
    result = pipe.generate([0, 7], seeds=0, sampling={"steps": 4}, trace=True)
    assert result.sampling.steps == 4 and result.sampling.cfg_weight == STORED.cfg_weight
    assert result.trace.masks.shape == (4, 2, 8, 8)
    assert not result.trace.masks[-1].any() and result.trace.masks[0].any()
    assert torch.equal(result.trace.predictions[-1], result.tokens)


def test_generate_rejects_bad_input(pipe):
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 10\)"):
        pipe.generate([10], seeds=0)
    with pytest.raises(ValueError, match="one entry per image"):
        pipe.generate([1, 2], seeds=[0])
    with pytest.raises(ValueError, match="empty"):
        pipe.generate([], seeds=0)


def test_inpaint_keeps_tokens_and_pixels_outside_the_region(pipe, fashion_mnist_small):
    image = fashion_mnist_small[0][3]  # (32, 32, 3) uint8
    edit = pipe.inpaint(image, class_id=2, box=(8, 8, 8, 8), count=3, seeds=5)
    # margin 1: pixel rows/cols 8..15 are tokens 2..3, widened to tokens 1..4
    expected = np.zeros((8, 8), dtype=bool)
    expected[1:5, 1:5] = True
    np.testing.assert_array_equal(edit.region, expected)
    known = pipe.encode(image[None])[0].cpu()
    for tokens in edit.tokens:
        assert torch.equal(tokens[~torch.from_numpy(expected)], known[~torch.from_numpy(expected)])
    assert edit.images.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(edit.images[:, 24:], np.broadcast_to(image[24:], (3, 8, 32, 3)))
    again = pipe.inpaint(image, class_id=2, box=(8, 8, 8, 8), count=3, seeds=5, batch_size=1)
    np.testing.assert_array_equal(again.images, edit.images)


def test_inpaint_mask_and_region_errors(pipe, fashion_mnist_small):
    image = fashion_mnist_small[0][0]
    mask = np.zeros((32, 32), dtype=bool)
    mask[20:28, 4:12] = True
    edit = pipe.inpaint(image, class_id=7, mask=mask, seeds=0)
    np.testing.assert_array_equal(edit.region, mask_to_token_region(mask, 4))
    assert edit.region.sum() == 4
    with pytest.raises(ValueError, match="exactly one of box"):
        pipe.inpaint(image, class_id=1)
    with pytest.raises(ValueError, match="extends past the 32×32 image"):
        pipe.inpaint(image, class_id=1, box=(20, 20, 16, 4))
    with pytest.raises(ValueError, match="selects no pixels"):
        pipe.inpaint(image, class_id=1, mask=np.zeros((32, 32), dtype=bool))


def test_class_guided_edit_regenerates_the_box_from_a_later_step(pipe, fashion_mnist_small):
    # The JAX demo's edit: a margin-widened box, re-generated for a target class, 12 steps from step 2.
    from weights import unwrap_model

    image = fashion_mnist_small[0][5]
    calls = []
    hook = unwrap_model(pipe.transformer).register_forward_pre_hook(lambda _m, _a: calls.append(1))
    try:
        edit = pipe.inpaint(
            image, class_id=3, box=(4, 4, 20, 16), count=2, seeds=[0, 1], start_step=2,
            sampling={"steps": 12, "cfg_weight": 0.0}, trace=True,
        )  # fmt: skip
    finally:
        hook.remove()
    assert len(calls) == 10  # 12 steps starting at step 2: 10 forward passes for the batch of 2
    expected = np.zeros((8, 8), dtype=bool)
    expected[0:7, 0:6] = True  # pixel rows 4..23 → tokens 1..5, cols 4..19 → 1..4; 1-token margin
    np.testing.assert_array_equal(edit.region, expected)
    known = pipe.encode(image[None])[0].cpu()
    for tokens in edit.tokens:
        assert torch.equal(tokens[~torch.from_numpy(expected)], known[~torch.from_numpy(expected)])
    assert edit.trace.predictions.shape == (10, 2, 8, 8)


def test_box_region_matches_token_units():
    region = box_to_token_region((0, 0, 4, 4), 32, 4, margin=0)
    assert region.sum() == 1 and region[0, 0]


def test_outpaint_extends_and_keeps_the_input(pipe, fashion_mnist_small):
    image = fashion_mnist_small[0][1]
    edit = pipe.outpaint(image, class_id=4, extend=16, count=2, seeds=3)
    assert edit.images.shape == (2, 32, 48, 3) and edit.tokens.shape == (2, 8, 12)
    assert edit.region[:, 8:].all() and not edit.region[:, :8].any()
    known = pipe.encode(image[None])[0].cpu()
    assert torch.equal(edit.tokens[0, :, :8], known) and torch.equal(edit.tokens[1, :, :8], known)
    # far from the seam the input's pixels are exact
    np.testing.assert_array_equal(edit.images[:, :, :24], np.broadcast_to(image[:, :24], (2, 32, 24, 3)))
    down = pipe.outpaint(image, class_id=4, extend=5, direction="down", seeds=3)
    assert down.images.shape == (1, 40, 32, 3)  # 5 px round up to 2 tokens


@pytest.mark.s3
def test_load_from_s3(folders, s3_server):
    import fsspec

    options = s3_server.storage_options
    fs = fsspec.filesystem("s3", **options)
    bucket = s3_server.bucket
    for name in ("transformer", "tokenizer"):
        fs.put(str(folders / name) + "/", f"{bucket}/generation/{name}/", recursive=True)
    remote = MaskGIT.load(
        f"s3://{bucket}/generation/transformer", f"s3://{bucket}/generation/tokenizer",
        device="cpu", storage_options=options,
    )  # fmt: skip
    local = MaskGIT.load(str(folders / "transformer"), str(folders / "tokenizer"), device="cpu")
    assert remote.class_names == NAMES and remote.sampling_defaults == STORED
    np.testing.assert_array_equal(
        remote.generate([3, 6], seeds=1).images, local.generate([3, 6], seeds=1).images
    )
