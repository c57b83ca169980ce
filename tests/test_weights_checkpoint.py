"""The shared weight folder (`weights/`) under both models: atomic saves, recorded digests, strict
errors for our own folders, version 1 transformer folders, and round trips through a real S3 server."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
import torch
from safetensors.torch import save_file

from tokenizer import VQGAN, preset
from tokenizer.checkpoint import load_vqgan, read_vqgan_config, save_vqgan, weights_digest
from transformer import (
    MaskTransformer,
    SamplingConfig,
    TransformerConfig,
    load_class_names,
    load_sampling_config,
    load_transformer,
    read_transformer_config,
    save_transformer,
)
from weights import (
    is_model_folder,
    load_folder_weights,
    load_state_dict_strictly,
    read_folder_config,
    save_folder,
    unwrap_model,
)

CONFIG = TransformerConfig(
    codebook_size=30, grid_size=4, num_classes=3, hidden_size=32, depth=2, num_heads=4, mlp_size=64
)
NAMES = ("cat", "dog", "bird")


def transformer(seed: int = 0) -> MaskTransformer:
    torch.manual_seed(seed)
    model = MaskTransformer(CONFIG)
    with torch.no_grad():
        model.bias.normal_()
    return model.eval()


def vqgan(seed: int = 0) -> VQGAN:
    torch.manual_seed(seed)
    return VQGAN(preset("tiny-f4")).eval()


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[key], sb[key]) for key in sa)


# --- atomic saves -----------------------------------------------------------------------------------


def test_a_save_that_fails_to_serialise_leaves_no_files_and_keeps_the_old_ones(tmp_path):
    shared = torch.ones(4)
    unsaveable = {"weight": shared, "alias": shared[:2]}  # tensors sharing memory: safetensors refuses
    with pytest.raises(ValueError, match="cannot serialise"):
        save_folder(tmp_path / "new", format_name="x", config={}, state_dict=unsaveable)
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
    with pytest.raises(ValueError, match=r"not tensors: \['step'\]"):
        save_folder(tmp_path / "new", format_name="x", config={}, state_dict={"step": 3})

    model = vqgan()
    folder = save_vqgan(model, tmp_path / "vq")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    with pytest.raises(ValueError, match="cannot serialise"):
        save_folder(folder, format_name="maskgit-vqgan", config={}, state_dict=unsaveable)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before  # no temporaries either
    assert same_state(load_vqgan(folder), model)


def test_extra_entries_may_not_shadow_the_folder_keys(tmp_path):
    with pytest.raises(ValueError, match=r"\['weights_sha256'\]"):
        save_folder(tmp_path, format_name="x", config={}, state_dict={}, extra={"weights_sha256": "0"})


# --- digests ----------------------------------------------------------------------------------------


def test_the_recorded_digest_is_the_sha256_of_the_weights_file(tmp_path):
    for folder in (
        save_vqgan(vqgan(), tmp_path / "vq"),
        save_transformer(transformer(), tmp_path / "tf", class_names=NAMES),
    ):
        actual = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        assert json.loads((folder / "config.json").read_text())["weights_sha256"] == actual
        assert weights_digest(folder) == actual
    # Re-saving identical weights gives identical bytes, so the same digest.
    assert weights_digest(save_transformer(transformer(), tmp_path / "again", class_names=NAMES)) == actual


def test_digest_of_a_folder_without_a_recorded_digest_is_computed(tmp_path):
    folder = save_vqgan(vqgan(), tmp_path / "vq")
    record = json.loads((folder / "config.json").read_text())
    recorded = record.pop("weights_sha256")
    record["version"] = 1  # what the previous code wrote
    (folder / "config.json").write_text(json.dumps(record))
    assert weights_digest(folder) == recorded
    assert read_vqgan_config(folder) == preset("tiny-f4")


# --- strict loading of our own folders -------------------------------------------------------------


def _resaved(folder, edit) -> None:
    """Rewrite `folder/model.safetensors` with an edited state dict, keeping its config.json."""
    state = load_folder_weights(folder)
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


@pytest.mark.parametrize("family", ["vqgan", "transformer"])
def test_renamed_missing_and_mis_shaped_keys_in_our_folders_are_named(tmp_path, family):
    if family == "vqgan":
        save, load, key = save_vqgan, load_vqgan, "quantize.embedding.weight"
        model, what = vqgan(), "VQGAN config"
    else:
        save, load, key = save_transformer, load_transformer, "tok_emb.weight"
        model, what = transformer(), "MaskTransformer layout"
    shape = tuple(model.state_dict()[key].shape)

    folder = save(model, tmp_path / "renamed")
    _resaved(folder, lambda sd: sd.update({key + "_renamed": sd.pop(key)}))
    with pytest.raises(ValueError, match=f"does not match the {what}") as error:
        load(folder)
    message = str(error.value)
    assert f"1 missing key: {key}" in message and f"1 unexpected key: {key}_renamed" in message
    assert "model.safetensors" in message

    folder = save(model, tmp_path / "missing")
    _resaved(folder, lambda sd: sd.pop(key))
    with pytest.raises(ValueError, match=f"1 missing key: {key}$"):
        load(folder)

    folder = save(model, tmp_path / "reshaped")
    _resaved(folder, lambda sd: sd.update({key: torch.zeros(shape[0] + 1, *shape[1:])}))
    bad = (shape[0] + 1, *shape[1:])
    with pytest.raises(ValueError, match=rf"1 mis-shaped key: {key} \(checkpoint \({bad[0]}, "):
        load(folder)


def test_strict_errors_list_the_first_keys_and_count_the_rest():
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(7)])
    with pytest.raises(ValueError, match=r"14 missing keys: 0\.weight, .*, 4\.bias, \.\.\. and 4 more"):
        load_state_dict_strictly(model, {}, "empty.safetensors", what="the stack")


def test_unwrap_model_sees_through_nested_wrappers():
    inner = torch.nn.Linear(2, 2)
    compiled = torch.nn.Module()
    compiled._orig_mod = inner
    engine = torch.nn.Module()
    engine.module = compiled
    assert unwrap_model(engine) is inner and unwrap_model(inner) is inner


# --- transformer folders of version 1 ---------------------------------------------------------------


def test_version_1_transformer_folders_still_load(tmp_path):
    model = transformer()
    folder = tmp_path / "v1"
    folder.mkdir()
    # Exactly what the previous `save_transformer` wrote: the config under "model", no digest.
    save_file(model.state_dict(), str(folder / "model.safetensors"), metadata={"format": "pt"})
    sampling = SamplingConfig(steps=5)
    document = {"format": "maskgit-transformer", "version": 1, "model": CONFIG.to_dict()}
    (folder / "config.json").write_text(json.dumps({**document, "sampling": sampling.to_dict()}))
    assert same_state(load_transformer(folder), model)
    assert read_transformer_config(folder) == CONFIG and load_sampling_config(folder) == sampling
    assert load_class_names(folder) is None
    assert read_folder_config(folder, "maskgit-transformer")["config"] == CONFIG.to_dict()
    assert weights_digest(folder) == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps({**document, "version": 3}))
    with pytest.raises(ValueError, match=r"version 3; this code reads versions \[1, 2\]"):
        load_transformer(folder)


# --- object storage ---------------------------------------------------------------------------------


@pytest.mark.s3
def test_both_models_round_trip_through_s3(s3_server):
    options = s3_server.storage_options
    root = s3_server.url("weights-tests", uuid.uuid4().hex)

    model = vqgan()
    url = save_vqgan(model, f"{root}/vqgan", storage_options=options)
    assert url == f"{root}/vqgan" and is_model_folder(url, options)
    assert same_state(load_vqgan(url, storage_options=options), model)
    assert read_vqgan_config(url, storage_options=options) == model.config
    recorded = read_folder_config(url, "maskgit-vqgan", options)["weights_sha256"]
    assert weights_digest(url, storage_options=options) == recorded
    assert weights_digest(f"{url}/model.safetensors", storage_options=options) == recorded  # hashed

    model = transformer()
    sampling = SamplingConfig(steps=6, cfg_weight=2.0)
    url = save_transformer(model, f"{root}/transformer", sampling, class_names=NAMES, storage_options=options)
    assert same_state(load_transformer(url, storage_options=options), model)
    assert same_state(load_transformer(f"{url}/config.json", storage_options=options), model)
    assert read_transformer_config(url, storage_options=options) == CONFIG
    assert load_sampling_config(url, storage_options=options) == sampling
    assert load_class_names(url, storage_options=options) == NAMES
    # Overwriting a folder on S3 replaces both files.
    save_transformer(transformer(seed=1), url, storage_options=options)
    assert same_state(load_transformer(url, storage_options=options), transformer(seed=1))
    assert load_class_names(url, storage_options=options) is None

    missing = f"{root}/nothing-here"
    assert not is_model_folder(missing, options)
    with pytest.raises(FileNotFoundError):
        load_vqgan(missing, storage_options=options)


@pytest.mark.s3
def test_a_reference_pth_on_s3_is_read_through_a_local_copy(s3_server, tmp_path):
    import fsspec

    options = s3_server.storage_options
    model = transformer()
    torch.save({"model_state_dict": model.state_dict(), "iter": 9}, tmp_path / "ref.pth")
    url = s3_server.url("weights-tests", uuid.uuid4().hex, "ref.pth")
    fs, path = fsspec.core.url_to_fs(url, **options)
    fs.put_file(str(tmp_path / "ref.pth"), path)
    loaded = load_transformer(url, num_classes=CONFIG.num_classes, num_heads=4, storage_options=options)
    assert same_state(loaded, model)
    assert load_class_names(url, storage_options=options) is None
