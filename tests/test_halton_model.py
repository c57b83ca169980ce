"""HaltonTransformer (the v2 transformer): released layouts, strict reader, forward parity, shared API.

`data/halton_large384_layout.json` is the released `ImageNet_384_large.pth` state dict's key table
([key, shape, kind] in state-dict order; docs/reference.md#halton-transformer). Files are written
by the tests in the released layout: the large one is checked as a table (no weights allocated),
the 23 M tiny one is written and read for real.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from transformer.checkpoint import (
    load_sampling_config,
    load_transformer,
    read_transformer_config,
    save_transformer,
)
from transformer.config import HALTON_PRESETS, PRESETS, SAMPLING_PRESETS, HaltonConfig, TransformerConfig
from transformer.convert import read_reference_checkpoint
from transformer.convert_halton import expected_shapes, infer_halton_config, read_halton_checkpoint
from transformer.halton import HaltonTransformer
from transformer.model import MaskTransformer, unwrap_model
from transformer.objective import masked_token_loss

LAYOUT_FILE = Path(__file__).parent / "data" / "halton_large384_layout.json"
LAYOUT = [(key, tuple(shape)) for key, shape, _ in json.loads(LAYOUT_FILE.read_text())]
TINY = HALTON_PRESETS["halton-tiny"]

# Parameter counts of the reference sizes (tied head counted once), 16×16 and 24×24 grids.
REFERENCE_PARAMETERS = {
    "tiny": (23_031_425, 23_154_305),
    "small": (69_344_769, 69_508_609),
    "base": (142_224_641, 142_470_401),
    "large": (479_656_961, 479_984_641),
    "xlarge": (692_118_401, 692_487_041),
}


@pytest.fixture(scope="module")
def tiny() -> HaltonTransformer:
    torch.manual_seed(0)
    model = HaltonTransformer(TINY).eval()
    with torch.no_grad():  # adaLN-zero starts as the identity; give the blocks something to do
        for block in model.transformer.layers:
            block.mlp[1].weight.normal_(std=0.05)
            block.mlp[1].bias.normal_(std=0.05)
    return model


def grid_batch(config: HaltonConfig, batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    side = config.grid_size
    tokens = torch.randint(0, config.codebook_size + 1, (batch, side, side), generator=generator)
    classes = torch.randint(0, config.num_classes, (batch,), generator=generator)
    drop = torch.rand(batch, generator=generator) < 0.5
    return tokens, classes, drop


# --- config and layout ------------------------------------------------------------------------------


def test_presets_have_the_reference_sizes():
    for size, counts in REFERENCE_PARAMETERS.items():
        for resolution, expected in zip((256, 384), counts):
            with torch.device("meta"):
                model = HaltonTransformer(HALTON_PRESETS[f"halton-imagenet{resolution}-{size}"])
            assert sum(p.numel() for p in model.parameters()) == expected, (size, resolution)
    small = HALTON_PRESETS["halton-imagenet256-small"]
    assert (small.head_dim, small.attention_width, small.ffn_size) == (85, 510, 1536)
    large = HALTON_PRESETS["halton-imagenet384-large"]
    assert (large.grid_size, large.ffn_size) == (24, 2816)
    assert (large.mask_token_id, large.null_class_id, large.vocab_size) == (16384, 1000, 16385)


def test_large_384_layout_key_for_key_without_allocating():
    assert list(expected_shapes(HALTON_PRESETS["halton-imagenet384-large"]).items()) == LAYOUT  # 274 entries


def test_configs_round_trip_and_old_dicts_load():
    for config in HALTON_PRESETS.values():
        assert HaltonConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = PRESETS["tiny"].to_dict()
    assert old.pop("family") == "maskgit"  # saved before the field existed
    assert TransformerConfig.from_dict(old) == PRESETS["tiny"]
    with pytest.raises(ValueError, match="family"):
        HaltonConfig(family="maskgit")
    with pytest.raises(ValueError, match="family"):
        TransformerConfig(family="halton")
    with pytest.raises(ValueError, match="n_layer"):
        HaltonConfig.from_dict({"n_layer": 3})


# --- reading released files -------------------------------------------------------------------------


def released_file(path: Path, config: HaltonConfig, *, prefix: str = "module.", optimizer: bool = True):
    """A file in the reference's layout: {iter, global_epoch, model_state_dict, optimizer_state_dict}."""
    model = HaltonTransformer(config)
    state = {prefix + key: value for key, value in model.state_dict().items()}
    optimizer_state = None
    if optimizer:
        names = [name for name, _ in model.named_parameters()][:2]
        optimizer_state = {
            "state": {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)} for i in range(len(names))},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.03, "params": [0, 1]}],
        }
    torch.save(
        {"iter": 1000, "global_epoch": 2, "model_state_dict": state, "optimizer_state_dict": optimizer_state},
        path,
    )
    return model.state_dict()


def test_released_tiny_256_file_loads_strictly_and_runs(tmp_path):
    path = tmp_path / "ImageNet_256_tiny.pth"
    original = released_file(path, HALTON_PRESETS["halton-imagenet256-tiny"])
    config, state = read_halton_checkpoint(path)
    assert config == HALTON_PRESETS["halton-imagenet256-tiny"]
    model = HaltonTransformer(config).eval()
    model.load_state_dict(state, strict=True)
    assert model.head.weight is model.tok_emb.weight
    assert all(torch.equal(model.state_dict()[key], value) for key, value in original.items())
    tokens, classes, drop = grid_batch(config, batch=2)
    with torch.no_grad():
        assert model(tokens, classes, drop).shape == (2, 256, 16384)
        assert model(tokens, classes, drop, with_mask_logit=True).shape == (2, 256, 16385)


def test_convert_transformer_command_writes_a_v2_file_in_our_format(tmp_path, capsys):
    from jobs.cli import main as cli_main
    from transformer import load_sampling_config, load_transformer

    path = tmp_path / "ImageNet_256_tiny.pth"
    original = released_file(path, HALTON_PRESETS["halton-imagenet256-tiny"])
    assert cli_main(["convert-transformer", str(path), str(tmp_path / "out")]) == 0
    assert "halton family" in capsys.readouterr().out
    loaded = load_transformer(tmp_path / "out")
    assert loaded.config == HALTON_PRESETS["halton-imagenet256-tiny"]
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in original.items())
    sampling = load_sampling_config(tmp_path / "out")
    assert sampling.order == "halton" and sampling.steps == 32 and sampling.cfg_schedule == "constant"


def test_ema_file_with_compile_prefix(tmp_path):
    path = tmp_path / "ema.pth"
    released_file(path, TINY, prefix="module._orig_mod.", optimizer=False)
    config, state = read_halton_checkpoint(path, config=TINY)
    assert config == TINY and list(state) == list(expected_shapes(TINY))


def _write(path: Path, model: HaltonTransformer, change) -> None:
    state = {key: value.clone() for key, value in model.state_dict().items()}
    change(state)
    torch.save({"model_state_dict": state}, path)


def test_renamed_missing_misshaped_and_untied_keys_are_named(tmp_path, tiny):
    path = tmp_path / "bad.pth"
    wq = "transformer.layers.1.attn.wq.weight"
    _write(path, tiny, lambda s: s.update({"transformer.layers.1.attn.q_proj.weight": s.pop(wq)}))
    renamed = r"missing keys transformer\.layers\.1\.attn\.wq\.weight.*unexpected keys .*attn\.q_proj\.weight"
    with pytest.raises(ValueError, match=renamed):
        read_halton_checkpoint(path, config=TINY)
    _write(path, tiny, lambda s: s.pop("reg_tokens.weight"))
    with pytest.raises(ValueError, match=r"missing keys reg_tokens\.weight"):
        read_halton_checkpoint(path, config=TINY)
    _write(path, tiny, lambda s: s.update({"last_norm.mlp.1.bias": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"shape mismatch last_norm\.mlp\.1\.bias \(3,\)"):
        read_halton_checkpoint(path, config=TINY)
    _write(path, tiny, lambda s: s.update({"head.weight": s["head.weight"] + 1}))
    with pytest.raises(ValueError, match=r"head\.weight differs from tok_emb\.weight"):
        read_halton_checkpoint(path, config=TINY)


def test_v1_and_v2_files_are_told_apart(tmp_path, tiny):
    v1 = tmp_path / "MaskGIT_ImageNet_256.pth"
    torch.save({"model_state_dict": MaskTransformer(PRESETS["tiny"]).state_dict()}, v1)
    with pytest.raises(ValueError, match=r"valeoai v1 MaskGIT checkpoint.*convert-transformer"):
        read_halton_checkpoint(v1)
    v2 = tmp_path / "ImageNet_256_small.pth"
    _write(v2, tiny, lambda s: None)
    with pytest.raises(ValueError, match=r"valeoai v2 \(Halton-MaskGIT\) transformer.*convert_halton"):
        read_reference_checkpoint(v2)
    # load_transformer tells them apart by their keys and builds the right family.
    assert isinstance(load_transformer(v2, num_heads=4), HaltonTransformer)
    assert isinstance(load_transformer(v1, num_classes=10), MaskTransformer)


def test_our_folder_round_trip_for_both_families(tmp_path, tiny):
    save_transformer(tiny, tmp_path / "halton", sampling=SAMPLING_PRESETS["halton"])
    document = json.loads((tmp_path / "halton" / "config.json").read_text())
    assert document["config"]["family"] == "halton"
    loaded = load_transformer(tmp_path / "halton")
    assert isinstance(loaded, HaltonTransformer) and loaded.head.weight is loaded.tok_emb.weight
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tiny.state_dict().items())
    assert read_transformer_config(tmp_path / "halton") == TINY
    assert load_sampling_config(tmp_path / "halton") == SAMPLING_PRESETS["halton"]
    v1 = MaskTransformer(PRESETS["tiny"])
    save_transformer(v1, tmp_path / "maskgit")
    assert isinstance(load_transformer(tmp_path / "maskgit"), MaskTransformer)
    # A folder written before the family field existed is a v1 model.
    config_path = tmp_path / "maskgit" / "config.json"
    document = json.loads(config_path.read_text())
    del document["config"]["family"]
    config_path.write_text(json.dumps(document))
    assert read_transformer_config(tmp_path / "maskgit") == PRESETS["tiny"]


def test_heads_come_from_the_reference_size_or_must_be_given(tiny):
    with pytest.raises(ValueError, match="pass num_heads"):
        infer_halton_config(tiny.state_dict())  # width 128 is no reference size
    assert infer_halton_config(tiny.state_dict(), num_heads=4) == TINY  # its FFN rounds to 128, not 256
    with pytest.raises(ValueError, match="no SwiGLU width"):
        odd = {**tiny.state_dict(), "transformer.layers.0.ff.w1.weight": torch.zeros(383, 128)}
        infer_halton_config(odd, num_heads=4)
    for name in ("halton-imagenet256-small", "halton-imagenet384-large"):
        with torch.device("meta"):
            shapes_only = HaltonTransformer(HALTON_PRESETS[name]).state_dict()
        assert infer_halton_config(shapes_only) == HALTON_PRESETS[name]


# --- forward --------------------------------------------------------------------------------------


def _rms(x: torch.Tensor, weight=None, bias=None) -> torch.Tensor:
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


def reference_forward(sd: dict, config: HaltonConfig, tokens, classes, drop) -> torch.Tensor:
    """The v2 forward re-stated from its description, on the state dict: logits [B, N, K + 1]."""
    batch, heads = tokens.shape[0], config.num_heads
    y = torch.where(drop, config.num_classes, classes)
    c = sd["cls_emb.weight"][y]  # the class vector only modulates; it is not in the sequence
    x = sd["tok_emb.weight"][tokens.flatten(1)] + sd["pos_emb.weight"]
    x = torch.cat([x, sd["reg_tokens.weight"].expand(batch, -1, -1)], dim=1)  # register after the image
    for i in range(config.depth):
        p = f"transformer.layers.{i}."
        mod = F.linear(F.silu(c), sd[p + "mlp.1.weight"], sd[p + "mlp.1.bias"])[:, None]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        h = _rms(x, sd[p + "ln1.weight"]) * (1 + scale1) + shift1
        q = _rms(h @ sd[p + "attn.wq.weight"].t())  # QK-norm over the whole vector, then heads
        k = _rms(h @ sd[p + "attn.wk.weight"].t())
        v = h @ sd[p + "attn.wv.weight"].t()
        q, k, v = (t.view(batch, -1, heads, config.head_dim).transpose(1, 2) for t in (q, k, v))
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(config.head_dim), dim=-1) @ v
        attention = attention.transpose(1, 2).reshape(batch, x.shape[1], -1)
        x = x + gate1 * (attention @ sd[p + "attn.wo.weight"].t())
        h = _rms(x, sd[p + "ln2.weight"]) * (1 + scale2) + shift2
        gated = F.silu(h @ sd[p + "ff.w1.weight"].t()) * (h @ sd[p + "ff.w3.weight"].t())
        x = x + gate2 * (gated @ sd[p + "ff.w2.weight"].t())
    x = x[:, : config.num_tokens]
    final = F.linear(F.silu(c), sd["last_norm.mlp.1.weight"], sd["last_norm.mlp.1.bias"])
    shift, scale = final[:, None].chunk(2, dim=-1)
    x = _rms(x, sd["last_norm.norm_final.weight"], sd["last_norm.norm_final.bias"]) * (1 + scale) + shift
    return x @ sd["head.weight"].t() + sd["head.bias"]


def test_forward_matches_the_restated_reference(tiny):
    tokens, classes, drop = grid_batch(TINY, batch=3, seed=1)
    with torch.no_grad():
        expected = reference_forward(tiny.state_dict(), TINY, tokens, classes, drop)
        full = tiny(tokens, classes, drop, with_mask_logit=True)
        torch.testing.assert_close(full, expected, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(tiny(tokens, classes, drop), expected[..., :-1], atol=2e-5, rtol=2e-5)
        positions = tokens == TINY.mask_token_id
        selected = tiny(tokens, classes, drop, positions=positions)
        torch.testing.assert_close(selected, full[..., :-1][positions.flatten(1)])
        # A dropped label is the null class, whatever the class id says.
        dropped = torch.ones(3, dtype=torch.bool)
        other = (classes + 1) % TINY.num_classes
        assert torch.equal(tiny(tokens, other, dropped), tiny(tokens, classes, dropped))


def test_shared_api_with_v1(tiny):
    wrapper = torch.nn.Module()
    wrapper.module = tiny  # as DDP and DeepSpeed hold it
    assert unwrap_model(wrapper) is tiny
    with pytest.raises(ValueError, match="class ids"):
        tiny(*grid_batch(TINY)[:1], torch.tensor([0, 1, 10]))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 256\]"):
        tiny(torch.full((1, 8, 8), 257), torch.tensor([0]))
    # The training objective runs on either family (here with the v2 recipe: no label smoothing).
    model = HaltonTransformer(TINY).train()
    tokens = torch.randint(0, TINY.codebook_size, (4, 8, 8))
    generator = torch.Generator().manual_seed(0)
    out = masked_token_loss(model, tokens, torch.arange(4), generator=generator, label_smoothing=0.0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.tok_emb.weight.grad is not None
