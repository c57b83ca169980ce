"""`FrozenConfig`: `to_dict`, `from_dict` and `replace` written once for every config dataclass.

Every config of ours is a frozen dataclass whose defaults are the reference values
(docs/architecture.md, "Conventions" 2). They travel as JSON (a weight folder's `config.json`, a
token store's manifest, a training run's settings, a Serve deployment's `args:`), so each needs the
same three things, which live here instead of in each class:

- `to_dict()`: a plain JSON-ready dict; tuples become lists, nested dataclasses dicts (a nested
  `FrozenConfig` through its own `to_dict`). The JSON is the same as the classes wrote by hand before.
- `from_dict(values)`: the inverse; missing keys take the defaults, and unknown keys are an error
  that names them ("unknown VQGANConfig field(s) ['n_layer']; known fields: [...]"), instead of
  being ignored.
- `replace(**changes)`: a copy with some fields changed, validated like a new config.

A class keeps its own validation in `__post_init__`; what differs in reading a stored dict (a nested
config, a JSON list for a tuple, strings from a command line) is one small hook, `_from_stored`.

Pure Python: imports nothing of ours and no third-party package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Self


def plain(value: Any) -> Any:
    """`value` as JSON-ready data: tuples and lists become lists, dataclasses and mappings dicts."""
    if isinstance(value, FrozenConfig):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    return value


class FrozenConfig:
    """Base of our frozen config dataclasses: `to_dict`, `from_dict` naming unknown keys, `replace`.

    Use it as a base of a `@dataclass(frozen=True)` class. Two hooks a subclass may set:

    Attributes:
        unknown_key_label: how the unknown-key error names one key (default "<ClassName> field"); the
            message is "unknown <label>(s) [...]; known <last word of label>s: [...]".
    """

    unknown_key_label: ClassVar[str | None] = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field (tuples become lists)."""
        return {field.name: plain(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Inverse of `to_dict`; missing keys take the defaults.

        Raises:
            ValueError: keys that are not fields of the class (named, with the known ones), or a value
                the class's `__post_init__` rejects.
        """
        known = sorted(field.name for field in dataclasses.fields(cls))
        unknown = sorted(set(values) - set(known))
        if unknown:
            label = cls.unknown_key_label or f"{cls.__name__} field"
            raise ValueError(f"unknown {label}(s) {unknown}; known {label.split()[-1]}s: {known}")
        return cls(**cls._from_stored(dict(values)))

    @classmethod
    def _from_stored(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Hook: stored values (only known keys) -> constructor arguments. The default keeps them."""
        return values

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)
