"""The base of every params section: frozen, typed, and able to record the dotted keys read from it (the
params audit), plus the discovery of extension modules by name."""

from __future__ import annotations

import importlib.util
import pkgutil
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Budget = Annotated[int | float, Field(gt=0)]


_SEEN: set[str] | None = None  # the read audit's record (record_reads), None when off


def record_reads(seen: set[str] | None) -> None:
    """Record every params key read from now on into `seen` (None: stop)."""
    global _SEEN
    _SEEN = seen


class _Reads(dict):
    """A mapping field of the params (`upstreams`, `models`, test-set weights...) that records its reads."""

    def __init__(self, data: dict, prefix: str):
        super().__init__(data)
        self._prefix = prefix

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if _SEEN is not None and not isinstance(value, BaseModel):
            _SEEN.add(f"{self._prefix}.{key}")
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def _whole(self) -> None:
        if _SEEN is not None:
            _SEEN.add(self._prefix)

    def __iter__(self):
        self._whole()
        return super().__iter__()

    def keys(self):
        self._whole()
        return super().keys()

    def items(self):
        self._whole()
        return super().items()

    def values(self):
        self._whole()
        return super().values()


class Section(BaseModel):
    """A frozen params section that knows its dotted key (for the read audit and error messages)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _key: str | None = PrivateAttr(None)  # None: not part of loaded params (a checkpoint's config), never recorded

    def _place(self, key: str) -> None:
        self._key = key
        for name, field in type(self).model_fields.items():
            value = BaseModel.__getattribute__(self, name)
            child = f"{key}.{field.alias or name}" if key else (field.alias or name)
            if isinstance(value, Section):
                value._place(child)
            elif isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(v, Section):
                        v._place(f"{child}.{k}")

    def __getattribute__(self, name: str) -> Any:
        value = BaseModel.__getattribute__(self, name)
        if _SEEN is None or name.startswith("_") or name not in type(self).model_fields:
            return value
        key = self._dotted()
        if key is None:
            return value
        field = type(self).model_fields[name]
        path = f"{key}.{field.alias or name}" if key else (field.alias or name)
        if isinstance(value, dict):
            return _Reads(value, path)
        if not isinstance(value, Section):
            _SEEN.add(path)
        return value

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        if _SEEN is not None and self._dotted() is not None:
            _SEEN.add(self._dotted() or "*")
        return super().model_dump(**kwargs)

    def _dotted(self) -> str | None:
        # private attributes live in __pydantic_private__, beside the fields (plain attribute lookup misses them)
        return (object.__getattribute__(self, "__pydantic_private__") or {}).get("_key")


def _unique(values: list) -> list:
    dupes = sorted({str(v) for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"listed twice: {', '.join(dupes)}")
    return values


def modules_of(package: str) -> list[str]:
    """The modules of a registry package (labelbudget.upstreams, .decoders...), found without importing them
    (and torch): the one place extension points are discovered."""
    spec = importlib.util.find_spec(package)
    paths = list(spec.submodule_search_locations or []) if spec else []
    return sorted(m.name for m in pkgutil.iter_modules(paths) if m.name not in ("base", "__init__"))
