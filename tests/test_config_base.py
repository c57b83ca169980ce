"""The shared config scaffolding: `weights.config_base.FrozenConfig` and `weights.families.FamilyRegistry`."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, dataclass
from typing import ClassVar

import pytest

from tokenizer.config import VQGANConfig
from tokenizer.families import REGISTRY as TOKENIZERS
from tokenizer.families import build_tokenizer, tokenizer_config_from_dict, tokenizer_preset
from tokenizer.llamagen import LlamaGenVQ
from transformer.config import HaltonConfig, SamplingConfig, TransformerConfig
from transformer.families import build_transformer, transformer_preset
from transformer.halton import HaltonTransformer
from weights.config_base import FrozenConfig
from weights.families import Family, FamilyRegistry


@dataclass(frozen=True)
class Toy(FrozenConfig):
    width: int = 4
    sizes: tuple[int, ...] = (1, 2)
    family: str = "toy"

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"Toy.width must be >= 1, got {self.width}")


@dataclass(frozen=True)
class Labelled(FrozenConfig):
    name: str = "a"
    unknown_key_label: ClassVar[str] = "toy option"

    @classmethod
    def _from_stored(cls, values: dict) -> dict:
        return {key: str(value) for key, value in values.items()}


class ToyModel:
    def __init__(self, config: Toy) -> None:
        self.config = config


def test_round_trip_through_json_gives_lists_then_the_same_config():
    config = Toy(width=8, sizes=(3, 4))
    stored = config.to_dict()
    assert stored == {"width": 8, "sizes": [3, 4], "family": "toy"}
    assert Toy.from_dict(json.loads(json.dumps(stored))).to_dict() == stored
    assert Toy.from_dict({}) == Toy()  # missing keys take the defaults


def test_unknown_keys_are_named_with_the_known_ones():
    message = r"unknown Toy field\(s\) \['depth', 'n'\]; known fields: \['family', 'sizes', 'width'\]"
    with pytest.raises(ValueError, match=message):
        Toy.from_dict({"width": 2, "n": 1, "depth": 3})
    with pytest.raises(ValueError, match=r"unknown toy option\(s\) \['x'\]; known options: \['name'\]"):
        Labelled.from_dict({"x": 1})
    assert Labelled.from_dict({"name": 7}).name == "7"  # the class's hook ran


def test_replace_validates_and_the_config_stays_frozen():
    config = Toy()
    assert config.replace(width=9) == Toy(width=9)
    with pytest.raises(ValueError, match=r"Toy\.width must be >= 1, got 0"):
        config.replace(width=0)
    with pytest.raises(FrozenInstanceError):
        config.width = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "config",
    [VQGANConfig(ch_mult=(1, 2), resolution=32), TransformerConfig(), HaltonConfig(), SamplingConfig()],
)
def test_every_model_config_writes_plain_json_and_reads_it_back(config):
    stored = config.to_dict()
    assert json.loads(json.dumps(stored)) == stored
    assert type(config).from_dict(stored) == config


def test_registry_builds_the_family_of_the_config():
    registry = FamilyRegistry(kind="toy", families={"toy": Family(Toy, ToyModel)}, default_family="toy")
    model = registry.build(registry.config_from_dict({"width": 5}))  # no family key: the default
    assert isinstance(model, ToyModel) and model.config == Toy(width=5)
    assert isinstance(build_tokenizer(tokenizer_preset("llamagen-tiny-f4")), LlamaGenVQ)
    assert isinstance(build_transformer(transformer_preset("halton-tiny")), HaltonTransformer)
    assert isinstance(tokenizer_config_from_dict({"n_embed": 8}), VQGANConfig)  # stored before `family`
    with pytest.raises(TypeError, match="expected a VQGANConfig or LlamaGenVQConfig, got Toy"):
        TOKENIZERS.build(Toy())


def test_registry_names_unknown_families_and_presets():
    message = r"unknown tokenizer family 'vq9'; known families: \['llamagen-vq', 'vqgan'\]"
    with pytest.raises(ValueError, match=message):
        tokenizer_config_from_dict({"family": "vq9"})
    with pytest.raises(ValueError, match=r"unknown transformer preset 'huge'; known presets: \["):
        transformer_preset("huge")
    with pytest.raises(ValueError, match="default family 'b' is not one of"):
        FamilyRegistry(kind="toy", families={"toy": Family(Toy, ToyModel)}, default_family="b")
