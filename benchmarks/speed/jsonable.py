"""Typed results to results.json: a dataclass is written as an object whose keys are its fields, in their order."""

from __future__ import annotations

import dataclasses
from typing import Any


def optional() -> Any:
    """A field left out of the JSON while it is None (an entry measured only when its peer is there)."""
    return dataclasses.field(default=None, metadata={"omit_if_none": True})


def spliced() -> Any:
    """A dict field whose entries are written into the object itself, where the field stands (for keys that are
    data: one per length, variant or peer)."""
    return dataclasses.field(metadata={"spliced": True})


def to_json(value: Any) -> Any:
    """Dataclasses as dicts, recursively through dicts, lists and tuples; everything else as it is."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if item is None and field.metadata.get("omit_if_none"):
                continue
            if field.metadata.get("spliced"):
                out.update(to_json(item))
            else:
                out[field.name] = to_json(item)
        return out
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value
