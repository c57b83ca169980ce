"""LlamaGen VQ tokenizer (the v2 tokenizer): released layout, strict reader, l2-normalised codes, training.

`data/llamagen_vq16_layout.json` is the released `vq_ds16_c2i.pt` state dict's key table
([key, shape, kind] in state-dict order; docs/reference.md#llamagen-vq-tokenizer). Checkpoints are
written by the tests in that layout, at the released shapes where that is cheap on CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tokenizer.checkpoint import load_tokenizer, read_vqgan_config, save_vqgan
from tokenizer.config import LLAMAGEN_PRESETS, PRESETS, LlamaGenVQConfig, VQGANConfig
from tokenizer.convert import read_taming_checkpoint
from tokenizer.convert_llamagen import expected_shapes, infer_llamagen_config, read_llamagen_checkpoint
from tokenizer.llamagen import LlamaGenVQ
from tokenizer.vqgan import VQGAN, VQGANOutput

LAYOUT_FILE = Path(__file__).parent / "data" / "llamagen_vq16_layout.json"
LAYOUT = [(key, tuple(shape)) for key, shape, _ in json.loads(LAYOUT_FILE.read_text())]
TINY = LLAMAGEN_PRESETS["llamagen-tiny-f4"]


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def released_file(path: Path, **extra) -> dict[str, torch.Tensor]:
    """Write a file in the released layout, at the released shapes, with small random values."""
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=generator) * 0.02 for key, shape in LAYOUT}
    state["quantize.codebook_used"] = torch.zeros(65536)
    torch.save({"model": state, **extra}, path)
    return state


@pytest.fixture(scope="module")
def tiny() -> LlamaGenVQ:
    torch.manual_seed(0)
    return LlamaGenVQ(TINY).eval()


# --- config --------------------------------------------------------------------------------------


def test_released_preset_and_config_round_trip():
    config = LLAMAGEN_PRESETS["llamagen-vq16"]
    assert config == LlamaGenVQConfig() and config.family == "llamagen-vq"
    assert (config.downsample_factor, config.codebook_size, config.embed_dim) == (16, 16384, 8)
    assert config.grid_shape(384, 384) == (24, 24) and TINY.grid_shape(32, 32) == (8, 8)
    for preset in LLAMAGEN_PRESETS.values():
        assert LlamaGenVQConfig.from_dict(json.loads(json.dumps(preset.to_dict()))) == preset
    with pytest.raises(ValueError, match="family"):
        LlamaGenVQConfig(family="vqgan")
    with pytest.raises(ValueError, match="codebook_sise"):
        LlamaGenVQConfig.from_dict({"codebook_sise": 3})


def test_vqgan_config_family_and_old_dicts():
    old = PRESETS["tiny-f4"].to_dict()
    assert old.pop("family") == "vqgan"  # a config saved before the field existed
    assert VQGANConfig.from_dict(old) == PRESETS["tiny-f4"]
    with pytest.raises(ValueError, match="family"):
        VQGANConfig(family="llamagen-vq")


# --- layout --------------------------------------------------------------------------------------


def test_released_layout_key_for_key():
    shapes = expected_shapes(LLAMAGEN_PRESETS["llamagen-vq16"])
    assert list(shapes.items()) == LAYOUT  # same keys, shapes and order: 344 entries
    with torch.device("meta"):
        model = LlamaGenVQ()
    assert sum(p.numel() for p in model.parameters()) == 71_883_403


def test_released_file_loads_strictly_and_runs(tmp_path):
    path = tmp_path / "vq_ds16_c2i.pt"
    # LlamaGen's trainer also stores its step and an argparse.Namespace; both are read without pickles.
    state = released_file(path, steps=400_000, args=argparse.Namespace(image_size=256, codebook_size=16384))
    config, loaded = read_llamagen_checkpoint(path)
    assert config == LLAMAGEN_PRESETS["llamagen-vq16"]
    model = LlamaGenVQ(config).eval()
    model.load_state_dict(loaded, strict=True)
    assert torch.equal(model.quantize.embedding.weight, state["quantize.embedding.weight"])
    indices = model.encode_to_indices(images(1, 3, 32, 48))
    assert indices.shape == (1, 2, 3) and int(indices.max()) < 16384
    assert model.decode_from_indices(indices).shape == (1, 3, 32, 48)
    # The one tokenizer loader recognises the file by its keys.
    loaded = load_tokenizer(path)
    assert isinstance(loaded, LlamaGenVQ)
    assert torch.equal(loaded.encode_to_indices(images(1, 3, 32, 48)), indices)


@pytest.mark.parametrize("entry", ["ema", "state_dict"])
def test_other_entry_names_and_wrapper_prefixes(tmp_path, tiny, entry):
    path = tmp_path / "vq.pt"
    torch.save({entry: {f"module.{k}": v for k, v in tiny.state_dict().items()}}, path)
    config, state = read_llamagen_checkpoint(path, config=TINY)
    assert config == TINY and state.keys() == tiny.state_dict().keys()


def _write_tiny(path: Path, model: LlamaGenVQ, change) -> None:
    state = dict(model.state_dict())
    change(state)
    torch.save({"model": state}, path)


def test_renamed_missing_and_misshaped_keys_are_named(tmp_path, tiny):
    path = tmp_path / "bad.pt"
    query = "encoder.mid.1.q.weight"
    _write_tiny(path, tiny, lambda s: s.update({"encoder.mid.1.query.weight": s.pop(query)}))
    renamed = r"missing keys encoder\.mid\.1\.q\.weight.*unexpected keys encoder\.mid\.1\.query\.weight"
    with pytest.raises(ValueError, match=renamed):
        read_llamagen_checkpoint(path, config=TINY)
    _write_tiny(path, tiny, lambda s: s.pop("decoder.conv_blocks.0.attn.0.proj_out.bias"))
    with pytest.raises(ValueError, match=r"missing keys decoder\.conv_blocks\.0\.attn\.0\.proj_out\.bias"):
        read_llamagen_checkpoint(path, config=TINY)
    _write_tiny(path, tiny, lambda s: s.__setitem__("post_quant_conv.weight", torch.zeros(32, 4, 1, 1)))
    with pytest.raises(ValueError, match=r"shape mismatch post_quant_conv\.weight \(32, 4, 1, 1\)"):
        read_llamagen_checkpoint(path, config=TINY)
    # Without a config the shapes are read, and an architecture they do not describe is refused too.
    _write_tiny(path, tiny, lambda s: s.pop("quantize.embedding.weight"))
    with pytest.raises(ValueError, match=r"quantize\.embedding\.weight"):
        read_llamagen_checkpoint(path)


def test_v1_and_v2_tokenizers_are_told_apart(tmp_path, tiny):
    taming = tmp_path / "last.ckpt"
    torch.save({"state_dict": VQGAN(PRESETS["tiny-f4"]).state_dict()}, taming)
    with pytest.raises(ValueError, match=r"taming VQGAN checkpoint.*convert-vqgan"):
        read_llamagen_checkpoint(taming)
    llamagen = tmp_path / "vq.pt"
    torch.save({"model": tiny.state_dict()}, llamagen)
    with pytest.raises(ValueError, match=r"LlamaGen VQ checkpoint \(the v2 tokenizer\).*convert_llamagen"):
        read_taming_checkpoint(llamagen, config=PRESETS["tiny-f4"])
    with pytest.raises(ValueError, match="taming VQGAN checkpoint"):
        load_tokenizer(taming, config=TINY)  # a LlamaGen config for a taming file


def test_our_folder_round_trip_for_both_families(tmp_path, tiny):
    save_vqgan(tiny, tmp_path / "llamagen")
    assert read_vqgan_config(tmp_path / "llamagen") == TINY
    loaded = load_tokenizer(tmp_path / "llamagen")
    assert isinstance(loaded, LlamaGenVQ)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tiny.state_dict().items())
    with pytest.raises(ValueError, match="differs"):
        load_tokenizer(tmp_path / "llamagen", config=LLAMAGEN_PRESETS["llamagen-small-f8"])
    save_vqgan(VQGAN(PRESETS["tiny-f4"]), tmp_path / "vqgan")
    config_path = tmp_path / "vqgan" / "config.json"
    document = json.loads(config_path.read_text())
    del document["config"]["family"]  # a folder written before the field existed
    config_path.write_text(json.dumps(document))
    assert isinstance(load_tokenizer(tmp_path / "vqgan"), VQGAN)


def test_inference_from_shapes(tiny):
    assert infer_llamagen_config(tiny.state_dict(), norm_groups=8) == TINY
    with pytest.raises(ValueError, match="pass the architecture"):
        infer_llamagen_config(tiny.state_dict())  # 32 groups cannot split 16 channels


# --- behaviour -------------------------------------------------------------------------------------


def test_codes_and_latents_are_l2_normalised(tiny):
    x = images(2, 3, 32, 32, seed=1)
    indices = tiny.encode_to_indices(x)
    # Independent statement: argmax cosine similarity between quant_conv outputs and codebook rows.
    with torch.no_grad():
        z = tiny.quant_conv(tiny.encoder(x)).permute(0, 2, 3, 1)  # (B, h, w, D)
        cosine = F.normalize(z, dim=-1) @ F.normalize(tiny.quantize.embedding.weight, dim=-1).t()
    assert torch.equal(indices, cosine.argmax(-1))
    decoded = tiny.decode_from_indices(indices)
    # Rescaling codebook rows changes nothing: only their directions are used, when encoding and decoding.
    scaled = LlamaGenVQ(TINY).eval()
    scaled.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        scaled.quantize.embedding.weight.mul_(torch.rand(TINY.n_embed, 1) * 5 + 0.1)
    assert torch.equal(scaled.encode_to_indices(x), indices)
    torch.testing.assert_close(scaled.decode_from_indices(indices), decoded, atol=1e-5, rtol=1e-5)


def test_training_forward_matches_decode_and_has_llamagen_losses(tiny):
    x = images(3, 3, 32, 40, seed=2)
    with torch.no_grad():
        out = tiny(x)
    assert isinstance(out, VQGANOutput) and out.indices.shape == (3, 8, 10)
    torch.testing.assert_close(tiny.decode_from_indices(out.indices), out.reconstruction, atol=1e-5, rtol=0)
    # LlamaGen: vq = mse(q, sg z), commit = β·mse(sg q, z): equal values up to β.
    torch.testing.assert_close(out.commitment_loss, 0.25 * out.codebook_loss)
    torch.testing.assert_close(out.quantizer_loss, 1.25 * out.codebook_loss)


def test_bad_inputs_are_refused(tiny):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        tiny.encode_to_indices(images(1, 3, 32, 32) * 200)
    with pytest.raises(ValueError, match="multiple"):
        tiny.encode_to_indices(images(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tiny.decode_from_indices(torch.full((1, 8, 8), 256))


def test_the_tokenizer_trainer_trains_it_on_real_images(tmp_path, fashion_mnist_small):
    from torch.utils.data import TensorDataset

    from pipeline.images import to_model_input
    from tokenizer.train import train_tokenizer
    from tokenizer.train_config import TokenizerTrainingConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster on a shared 2-core machine
    images = to_model_input(fashion_mnist_small[0][:64])  # (64, 3, 32, 32) in [-1, 1]
    data, held_out = TensorDataset(images), images[:16]

    def config(steps: int) -> TokenizerTrainingConfig:
        return TokenizerTrainingConfig(
            vqgan=TINY, steps=steps, batch_size=8, lr=3e-3, disc_start=14, perceptual="none",
            dead_code_restart=10, log_every=10, checkpoint_every=100, grid_images=4,
        )  # fmt: skip

    try:
        summary = train_tokenizer(config(16), data, tmp_path, eval_images=held_out, progress=False)
        assert summary.final.mse * 1.5 < summary.initial.mse, (summary.initial, summary.final)
        reloaded = load_tokenizer(summary.model_dir)  # the folder says which family it holds
        assert isinstance(reloaded, LlamaGenVQ) and reloaded.config == TINY
        options = {"eval_images": held_out, "progress": False}
        resumed = train_tokenizer(config(18), data, tmp_path, resume=True, **options)
        assert (resumed.start_step, resumed.steps) == (16, 18)
    finally:
        torch.set_num_threads(threads)
