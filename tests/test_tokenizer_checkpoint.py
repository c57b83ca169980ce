"""Weights on disk: our folder format, the strict taming `last.ckpt` reader, `maskgit convert-vqgan`."""

from __future__ import annotations

import hashlib
import json
import sys
import types

import pytest
import torch

from jobs.cli import main as cli_main
from tokenizer.checkpoint import load_vqgan, save_vqgan, weights_digest
from tokenizer.config import VQGANConfig, preset
from tokenizer.convert import config_from_taming_yaml
from tokenizer.vqgan import VQGAN

# taming's configs/imagenet_vqgan.yaml layout (the released model.yaml), with {placeholders}.
TAMING_YAML = """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: {embed_dim}
    n_embed: {n_embed}
    ddconfig:
      double_z: false
      z_channels: {z_channels}
      resolution: {resolution}
      in_channels: 3
      out_ch: 3
      ch: {ch}
      ch_mult: {ch_mult}
      num_res_blocks: {num_res_blocks}
      attn_resolutions: {attn_resolutions}
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: false
        disc_in_channels: 3
        disc_start: 250001
        disc_weight: 0.8
        codebook_weight: 1.0
data:
  target: main.DataModuleFromConfig
  params:
    batch_size: 12
"""

# A taming-expressible small config (taming always uses 32 GroupNorm groups).
SMALL_TAMING = VQGANConfig(
    resolution=32,
    ch=32,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(16,),
    z_channels=32,
    embed_dim=16,
    n_embed=64,
)


def taming_yaml(config: VQGANConfig) -> str:
    return TAMING_YAML.format(
        embed_dim=config.embed_dim,
        n_embed=config.n_embed,
        z_channels=config.z_channels,
        resolution=config.resolution,
        ch=config.ch,
        ch_mult=list(config.ch_mult),
        num_res_blocks=config.num_res_blocks,
        attn_resolutions=list(config.attn_resolutions),
    )


def lightning_checkpoint(model: VQGAN) -> dict:
    """What PyTorch-Lightning 1.0 writes for taming's VQModel: weights + loss.* + trainer state."""
    state_dict = dict(model.state_dict())
    state_dict["loss.logvar"] = torch.zeros(())
    state_dict["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(64, 3, 3, 3)
    state_dict["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    state_dict["loss.discriminator.main.1.running_mean"] = torch.zeros(64)
    # Lightning 1.0 keys callback states by the callback *class*; imitate that with a stand-in module.
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    model_checkpoint = type("ModelCheckpoint", (), {"__module__": module.__name__})
    module.ModelCheckpoint = model_checkpoint
    return {
        "epoch": 7,
        "global_step": 1234,
        "pytorch-lightning_version": "1.0.8",
        "callbacks": {model_checkpoint: {"best_model_score": torch.tensor(0.5), "best_model_path": "x.ckpt"}},
        "optimizer_states": [
            {"state": {0: {"step": 3, "exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1.0}]}
        ],
        "lr_schedulers": [],
        "state_dict": state_dict,
        "_module": module,
    }


def save_lightning(payload: dict, path) -> None:
    module = payload.pop("_module")
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", module.__name__]
    saved = {name: sys.modules.get(name) for name in names}
    for name in names[:-1]:
        sys.modules[name] = types.ModuleType(name)
    sys.modules[module.__name__] = module
    try:
        torch.save(payload, path)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


class Payload:
    """An arbitrary class: unpickling an instance would run code, so the reader must refuse it."""


@pytest.fixture(scope="module")
def small_model() -> VQGAN:
    torch.manual_seed(0)
    model = VQGAN(SMALL_TAMING).eval()
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()
    return model


@pytest.fixture
def small_ckpt(tmp_path, small_model):
    path = tmp_path / "last.ckpt"
    save_lightning(lightning_checkpoint(small_model), path)
    (tmp_path / "model.yaml").write_text(taming_yaml(SMALL_TAMING))
    return path


def x_batch(size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def same_outputs(a: VQGAN, b: VQGAN, x: torch.Tensor) -> None:
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    assert torch.equal(out_a.indices, out_b.indices)
    assert torch.equal(out_a.reconstruction, out_b.reconstruction)


# --- our folder format ----------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    model = VQGAN(preset("tiny-f4")).eval()
    folder = save_vqgan(model, tmp_path / "vq")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    record = json.loads((folder / "config.json").read_text())
    assert record["format"] == "maskgit-vqgan" and record["config"]["n_embed"] == 256
    loaded = load_vqgan(folder)
    assert loaded.config == model.config and not loaded.training
    same_outputs(model, loaded, x_batch())
    # The digest is sha256 of the weights file and survives a re-save of the same weights.
    digest = weights_digest(folder)
    assert digest == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert weights_digest(save_vqgan(loaded, tmp_path / "again")) == digest
    with torch.no_grad():
        loaded.quantize.embedding.weight[0, 0] += 1
    assert weights_digest(save_vqgan(loaded, tmp_path / "changed")) != digest


def test_our_format_errors(tmp_path):
    folder = save_vqgan(VQGAN(preset("tiny-f4")), tmp_path / "vq")
    with pytest.raises(ValueError, match="differs"):
        load_vqgan(folder, config=preset("small-f8"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_vqgan(tmp_path / "nowhere")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        load_vqgan(folder)
    record = json.loads((folder / "config.json").read_text())
    record["format"] = "something-else"
    (folder / "config.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="something-else"):
        load_vqgan(folder)


def test_wrapped_models_are_unwrapped_before_saving(tmp_path):
    model = VQGAN(preset("tiny-f4")).eval()
    wrapper = torch.nn.Module()
    wrapper.module = model  # the DDP / DeepSpeed layout
    loaded = load_vqgan(save_vqgan(wrapper, tmp_path / "vq"))
    same_outputs(model, loaded, x_batch())


# --- the reference checkpoint -----------------------------------------------------------------------


def test_reference_lightning_checkpoint_loads_strictly(tmp_path):
    torch.manual_seed(0)
    source = VQGAN(VQGANConfig()).eval()  # imagenet-f16-1024
    assert sum(p.numel() for p in source.parameters()) == 72_141_699
    assert len(source.state_dict()) == 343
    folder = tmp_path / "VQGAN"
    folder.mkdir()
    save_lightning(lightning_checkpoint(source), folder / "last.ckpt")
    (folder / "model.yaml").write_text(taming_yaml(VQGANConfig()))
    assert config_from_taming_yaml(folder / "model.yaml") == VQGANConfig()

    loaded = load_vqgan(folder / "last.ckpt")
    same_outputs(source, loaded, x_batch(64, batch=1))  # 4×4 tokens; attention layers still run

    # `maskgit convert-vqgan` end to end writes our format with the same weights.
    assert cli_main(["convert-vqgan", str(folder / "last.ckpt"), str(tmp_path / "ours")]) == 0
    converted = load_vqgan(tmp_path / "ours")
    assert converted.config == VQGANConfig()
    for key, value in source.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key


def test_valeoai_head_layout_configs_beside_ckpts(tmp_path, small_model):
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "configs").mkdir()
    save_lightning(lightning_checkpoint(small_model), tmp_path / "ckpts" / "last.ckpt")
    (tmp_path / "configs" / "model.yaml").write_text(taming_yaml(SMALL_TAMING))
    same_outputs(small_model, load_vqgan(tmp_path / "ckpts" / "last.ckpt"), x_batch())


def test_explicit_config_yaml_or_dataclass(tmp_path, small_model):
    save_lightning(lightning_checkpoint(small_model), tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match=r"no model\.yaml"):
        load_vqgan(tmp_path / "last.ckpt")
    (tmp_path / "elsewhere.yaml").write_text(taming_yaml(SMALL_TAMING))
    loaded = load_vqgan(tmp_path / "last.ckpt", config=tmp_path / "elsewhere.yaml")
    same_outputs(small_model, loaded, x_batch())
    same_outputs(small_model, load_vqgan(tmp_path / "last.ckpt", config=SMALL_TAMING), x_batch())
    same_outputs(small_model, load_vqgan(save_vqgan(loaded, tmp_path / "ours")), x_batch())


def test_loss_keys_are_ignored_and_bare_state_dicts_load(tmp_path, small_model):
    bare = dict(small_model.state_dict())
    bare["loss.discriminator.main.0.weight"] = torch.zeros(1)
    torch.save(bare, tmp_path / "weights.pt")
    same_outputs(small_model, load_vqgan(tmp_path / "weights.pt", config=SMALL_TAMING), x_batch())


def _edited_checkpoint(tmp_path, small_model, edit) -> str:
    payload = lightning_checkpoint(small_model)
    edit(payload["state_dict"])
    path = tmp_path / "edited" / "last.ckpt"
    path.parent.mkdir(exist_ok=True)
    save_lightning(payload, path)
    (path.parent / "model.yaml").write_text(taming_yaml(SMALL_TAMING))
    return str(path)


def test_renamed_missing_and_reshaped_keys_are_named(tmp_path, small_model):
    def rename(sd):
        sd["encoder.mid.attn_1.query.weight"] = sd.pop("encoder.mid.attn_1.q.weight")

    with pytest.raises(ValueError, match=r"1 missing key: encoder\.mid\.attn_1\.q\.weight") as error:
        load_vqgan(_edited_checkpoint(tmp_path, small_model, rename))
    assert "1 unexpected key: encoder.mid.attn_1.query.weight" in str(error.value)

    with pytest.raises(ValueError, match=r"1 missing key: quantize\.embedding\.weight"):
        load_vqgan(_edited_checkpoint(tmp_path, small_model, lambda sd: sd.pop("quantize.embedding.weight")))

    def reshape(sd):
        sd["post_quant_conv.weight"] = torch.zeros(32, 8, 1, 1)

    with pytest.raises(
        ValueError,
        match=r"1 mis-shaped key: post_quant_conv\.weight "
        r"\(checkpoint \(32, 8, 1, 1\), model \(32, 16, 1, 1\)\)",
    ):
        load_vqgan(_edited_checkpoint(tmp_path, small_model, reshape))


def test_corrupt_and_unsafe_checkpoints_are_refused(tmp_path, small_ckpt):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(small_ckpt.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"truncated\.ckpt.*corrupt"):
        load_vqgan(truncated, config=SMALL_TAMING)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"garbage\.ckpt"):
        load_vqgan(garbage, config=SMALL_TAMING)

    torch.save({"state_dict": {}, "extra": Payload()}, tmp_path / "unsafe.ckpt")
    with pytest.raises(ValueError, match=r"unsafe\.ckpt needs the Python object .*Payload"):
        load_vqgan(tmp_path / "unsafe.ckpt", config=SMALL_TAMING)


def test_taming_yaml_options_we_do_not_implement_are_errors(tmp_path):
    text = taming_yaml(SMALL_TAMING)
    for old, new, match in [
        ("double_z: false", "double_z: true", "double_z"),
        ("dropout: 0.0", "dropout: 0.0\n      tanh_out: true", "tanh_out"),
        ("dropout: 0.0", "dropout: 0.0\n      resamp_with_conv: false", "resamp_with_conv"),
        ("dropout: 0.0", "dropout: 0.0\n      num_heads: 4", "num_heads"),
        ("taming.models.vqgan.VQModel", "taming.models.vqgan.GumbelVQ", "GumbelVQ"),
        ("n_embed: 64", "n_embed: 64\n    remap: used.npy", "remap"),
    ]:
        path = tmp_path / "model.yaml"
        path.write_text(text.replace(old, new))
        with pytest.raises(ValueError, match=match):
            config_from_taming_yaml(path)


def test_convert_cli_reports_bad_input_cleanly(tmp_path, small_model, capsys):
    save_lightning(lightning_checkpoint(small_model), tmp_path / "last.ckpt")
    assert cli_main(["convert-vqgan", str(tmp_path / "last.ckpt"), str(tmp_path / "out")]) == 2
    assert "no model.yaml" in capsys.readouterr().err
    (tmp_path / "cfg.yaml").write_text(taming_yaml(SMALL_TAMING))
    args = [
        "convert-vqgan",
        str(tmp_path / "last.ckpt"),
        str(tmp_path / "out"),
        "--config",
        str(tmp_path / "cfg.yaml"),
    ]
    assert cli_main(args) == 0
    same_outputs(small_model, load_vqgan(tmp_path / "out"), x_batch())


@pytest.mark.s3
def test_taming_checkpoint_on_s3_is_read_with_its_model_yaml(s3_server, small_ckpt, small_model):
    import uuid

    import fsspec

    options = s3_server.storage_options
    url = s3_server.url("tokenizer-tests", uuid.uuid4().hex)
    fs, root = fsspec.core.url_to_fs(url, **options)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vqgan(f"{url}/last.ckpt", storage_options=options)
    fs.put_file(str(small_ckpt), f"{root}/last.ckpt")
    with pytest.raises(FileNotFoundError, match=r"model\.yaml"):
        load_vqgan(f"{url}/last.ckpt", storage_options=options)
    same_outputs(
        small_model, load_vqgan(f"{url}/last.ckpt", config=SMALL_TAMING, storage_options=options), x_batch()
    )
    fs.put_file(str(small_ckpt.parent / "model.yaml"), f"{root}/model.yaml")
    same_outputs(small_model, load_vqgan(f"{url}/last.ckpt", storage_options=options), x_batch())
    assert weights_digest(f"{url}/last.ckpt", storage_options=options) == weights_digest(small_ckpt)
