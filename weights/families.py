"""`FamilyRegistry`: model families by tag — a config from a stored dict, a model from a config, presets.

One registry type serves the tokenizer families (`tokenizer.families`) and the transformer families
(`transformer.families`), so adding a family is one entry (docs/architecture.md, "Adding a model
family"). A config names its family in its `family` field; a config stored before that field
existed has none and belongs to the registry's default family.

Pure Python: imports nothing of ours and no third-party package.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar


class FamilyConfig(Protocol):
    """What the registry needs of a config instance: its family tag (classes also have `from_dict`)."""

    @property
    def family(self) -> str: ...


ConfigT = TypeVar("ConfigT", bound=FamilyConfig)
ModelT = TypeVar("ModelT")


def named_preset(presets: Mapping[str, ConfigT], name: str, kind: str) -> ConfigT:
    """`presets[name]`, or a ValueError "unknown <kind> preset 'name'; known presets: [...]"."""
    try:
        return presets[name]
    except KeyError:
        raise ValueError(f"unknown {kind} preset {name!r}; known presets: {sorted(presets)}") from None


@dataclass(frozen=True)
class Family(Generic[ConfigT, ModelT]):
    """One family: its config class (a `FrozenConfig` with a `family` field) and its model class."""

    config_class: type[ConfigT]
    model_class: type[ModelT]


@dataclass(frozen=True)
class FamilyRegistry(Generic[ConfigT, ModelT]):
    """Family tag -> (config class, model class), with the named presets of every family.

    Attributes:
        kind: what the families are, for messages ("tokenizer", "transformer").
        families: tag -> `Family`.
        default_family: the family of a stored config without a `family` key (the first family the
            format knew).
        presets: preset name -> config, of any family.
    """

    kind: str
    families: Mapping[str, Family[ConfigT, ModelT]]
    default_family: str
    presets: Mapping[str, ConfigT] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default_family not in self.families:
            raise ValueError(f"default family {self.default_family!r} is not one of {sorted(self.families)}")

    def family(self, tag: str) -> Family[ConfigT, ModelT]:
        """The family registered under `tag`.

        Raises:
            ValueError: an unknown tag (the message lists the known ones).
        """
        if tag not in self.families:
            raise ValueError(f"unknown {self.kind} family {tag!r}; known families: {sorted(self.families)}")
        return self.families[tag]

    def config_from_dict(self, values: Mapping[str, Any]) -> ConfigT:
        """The config of the family named by `values["family"]` (the default family when absent).

        Raises:
            ValueError: an unknown family, or keys the family's config does not have (named).
        """
        return self.family(values.get("family", self.default_family)).config_class.from_dict(values)

    def build(self, config: ConfigT) -> ModelT:
        """A freshly initialised model of `config`'s family.

        Raises:
            TypeError: `config` is not a config of a registered family.
        """
        family = self.families.get(getattr(config, "family", None))
        if family is None or not isinstance(config, family.config_class):
            known = " or ".join(each.config_class.__name__ for each in self.families.values())
            raise TypeError(f"expected a {known}, got {type(config).__name__}")
        return family.model_class(config)

    def preset(self, name: str) -> ConfigT:
        """The named preset of any family.

        Raises:
            ValueError: an unknown name (the message lists the known ones).
        """
        return named_preset(self.presets, name, self.kind)
