"""Checkpoints: our folder format round trip, the reference `.pth` read strictly, and the CLI converter."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch
from torch import nn

from jobs.cli import main as cli_main
from transformer import (
    PRESETS,
    MaskTransformer,
    SamplingConfig,
    TransformerConfig,
    load_class_names,
    load_sampling_config,
    load_transformer,
    save_transformer,
)
from transformer.convert import infer_reference_config, read_reference_checkpoint

CONFIG = TransformerConfig(
    codebook_size=30, grid_size=4, num_classes=5, hidden_size=32, depth=2, num_heads=4, mlp_size=64
)


def trained_looking_model(config: TransformerConfig = CONFIG, seed: int = 0) -> MaskTransformer:
    torch.manual_seed(seed)
    model = MaskTransformer(config)
    with torch.no_grad():
        model.bias.normal_()  # non-zero everywhere, so a wrong mapping would show
    return model.eval()


def inputs(config: TransformerConfig = CONFIG):
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(
        0, config.mask_token_id + 1, (3, config.grid_size, config.grid_size), generator=generator
    )
    return tokens, torch.tensor([0, 2, 4]), torch.tensor([False, True, False])


def write_reference_pth(path, model: MaskTransformer, *, prefix: str = "") -> None:
    """A file laid out like valeoai's `save_network` output (with an AdamW state, as released)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.96), weight_decay=1e-5)
    model(*inputs(model.config)).sum().backward()
    optimizer.step()
    state = {prefix + key: value for key, value in model.state_dict().items()}
    torch.save(
        {
            "iter": 1234,
            "global_epoch": 7,
            "model_state_dict": state,
            "optimizer_state_dict": optimizer.state_dict(),
        },
        path,
    )


def test_our_folder_round_trips_weights_config_and_sampling(tmp_path):
    model = trained_looking_model()
    sampling = SamplingConfig(steps=12, schedule="cosine", temperature=0.8, cfg_weight=1.5)
    names = ("shirt", "shoe", "bag", "coat", "dress")
    folder = save_transformer(model, tmp_path / "ckpt", sampling=sampling, class_names=names)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    document = json.loads((folder / "config.json").read_text())
    assert document["format"] == "maskgit-transformer" and document["version"] == 2
    assert document["config"] == CONFIG.to_dict() and document["class_names"] == list(names)
    weights_bytes = (folder / "model.safetensors").read_bytes()
    assert document["weights_sha256"] == hashlib.sha256(weights_bytes).hexdigest()
    loaded = load_transformer(folder)
    assert loaded.config == CONFIG and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs()), model(*inputs()), rtol=0, atol=0)
    assert load_sampling_config(folder) == sampling
    assert load_sampling_config(folder / "config.json") == sampling
    assert load_transformer(folder / "model.safetensors").config == CONFIG
    assert load_class_names(folder) == names
    assert load_class_names(save_transformer(model, tmp_path / "unnamed")) is None
    with pytest.raises(ValueError, match="3 class names given for a model of 5 classes"):
        save_transformer(model, tmp_path / "bad", class_names=names[:3])


def test_wrapped_models_are_unwrapped_before_saving(tmp_path):
    class Engine(nn.Module):  # the shape of DDP and DeepSpeed engines: the model at `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = trained_looking_model()
    save_transformer(Engine(model), tmp_path / "ckpt")
    loaded = load_transformer(tmp_path / "ckpt")
    assert list(loaded.state_dict()) == list(model.state_dict())  # no "module." prefix
    assert load_sampling_config(tmp_path / "ckpt") == SamplingConfig()
    with pytest.raises(TypeError, match="MaskTransformer"):
        save_transformer(nn.Linear(2, 2), tmp_path / "bad")


def test_reference_pth_loads_strictly_with_identical_logits(tmp_path):
    model = trained_looking_model()
    write_reference_pth(tmp_path / "MaskGIT_custom.pth", model)
    loaded = load_transformer(tmp_path / "MaskGIT_custom.pth", num_classes=CONFIG.num_classes, num_heads=4)
    assert loaded.config == CONFIG
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs()), model.eval()(*inputs()), rtol=0, atol=0)
    reference = read_reference_checkpoint(
        tmp_path / "MaskGIT_custom.pth", codebook_size=CONFIG.codebook_size, num_heads=4
    )
    assert (reference.iteration, reference.epoch) == (1234, 7)


def test_ddp_prefixed_reference_state_dicts_are_accepted(tmp_path):
    model = trained_looking_model()
    write_reference_pth(tmp_path / "ddp.pth", model, prefix="module.")
    assert (
        load_transformer(tmp_path / "ddp.pth", num_classes=CONFIG.num_classes, num_heads=4).config == CONFIG
    )


def zero_stride_state_dict(config: TransformerConfig) -> dict[str, torch.Tensor]:
    """Tensors with the right shapes but no memory: enough to recognise a released file's sizes."""
    with torch.device("meta"):
        shapes = {key: value.shape for key, value in MaskTransformer(config).state_dict().items()}
    return {key: torch.zeros(()).expand(shape) for key, shape in shapes.items()}


@pytest.mark.parametrize(
    ("preset", "steps", "gumbel", "cfg"),
    [("maskgit-imagenet256", 8, 4.5, 3.0), ("maskgit-imagenet512", 15, 7.0, 2.8)],
)
def test_released_sizes_are_recognised_from_their_shapes(preset, steps, gumbel, cfg):
    config = infer_reference_config(zero_stride_state_dict(PRESETS[preset]))
    assert config == PRESETS[preset]
    from transformer.config import reference_sampling_config

    sampling = reference_sampling_config(config.grid_size)
    assert (sampling.steps, sampling.gumbel_temperature, sampling.cfg_weight) == (steps, gumbel, cfg)
    assert (sampling.temperature, sampling.schedule, sampling.cfg_schedule) == (1.0, "arccos", "linear")


def test_reference_pth_gets_the_reference_sampling_defaults(tmp_path):
    # A 32×32-grid model is the 512 release's resolution: 15 steps, Gumbel 7, CFG 2.8.
    config = TransformerConfig(
        **{**CONFIG.to_dict(), "grid_size": 32, "codebook_size": 1024, "num_classes": 1000}
    )
    write_reference_pth(tmp_path / "512.pth", trained_looking_model(config))
    sampling = load_sampling_config(tmp_path / "512.pth")
    assert (sampling.steps, sampling.gumbel_temperature, sampling.cfg_weight) == (15, 7.0, 2.8)


def test_bad_keys_are_named(tmp_path):
    state = trained_looking_model().state_dict()
    for name, edit, message in (
        (
            "missing",
            lambda s: s.pop("transformer.layers.1.0.fn.mha.in_proj_weight"),
            "1 missing key: transformer.layers.1.0.fn.mha.in_proj_weight",
        ),
        ("unexpected", lambda s: s.update({"head.weight": torch.zeros(3)}), "1 unexpected key: head.weight"),
        (
            "shape",
            lambda s: s.update({"last_layer.2.bias": torch.zeros(33)}),
            r"1 mis-shaped key: last_layer.2.bias \(checkpoint \(33,\), model \(32,\)\)",
        ),
    ):
        broken = dict(state)
        edit(broken)
        torch.save({"model_state_dict": broken}, tmp_path / f"{name}.pth")
        with pytest.raises(ValueError, match=message):
            load_transformer(tmp_path / f"{name}.pth", num_classes=CONFIG.num_classes)


def test_unknown_vocabulary_split_needs_to_be_told(tmp_path):
    torch.save({"model_state_dict": trained_looking_model().state_dict()}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="pass num_classes or codebook_size"):
        load_transformer(tmp_path / "x.pth")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model_state_dict": Payload()}, handle)
    with pytest.raises(ValueError, match="weights-only"):
        load_transformer(path)


def test_missing_paths_and_foreign_folders(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_transformer(tmp_path / "nope")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_transformer(tmp_path / "folder")
    (tmp_path / "folder" / "config.json").write_text(json.dumps({"format": "vqgan"}))
    with pytest.raises(ValueError, match="format"):
        load_transformer(tmp_path / "folder")


def test_convert_cli_writes_our_format(tmp_path, capsys):
    model = trained_looking_model()
    write_reference_pth(tmp_path / "ref.pth", model)
    code = cli_main(
        [
            "convert-transformer",
            str(tmp_path / "ref.pth"),
            str(tmp_path / "out"),
            "--num-classes",
            "5",
            "--num-heads",
            "4",
        ]
    )
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    loaded = load_transformer(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs()), model.eval()(*inputs()), rtol=0, atol=0)
    assert load_sampling_config(tmp_path / "out") == SamplingConfig()  # a 4×4 grid gets the 256 defaults
    # Bad input is one clean line, exit status 2.
    assert cli_main(["convert-transformer", str(tmp_path / "ref.pth"), str(tmp_path / "out2")]) == 2
    assert "pass num_classes" in capsys.readouterr().err
