"""Checking a params mapping: the typed `Params`, or one line naming the first broken key, its value and what is
allowed."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError

from labelbudget.errors import ParamsError
from labelbudget.schema.params import Params
from labelbudget.schema.sections import Model, Upstream

OWN_SECTIONS = {"corpus", "upstreams", "pretrain", "extract", "probe", "finetune", "evaluate", "report"}


def _message(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"])
    text = re.sub(r"^(Value error|Assertion failed), ", "", err["msg"])
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key; allowed here: {', '.join(_known_keys(err['loc']))}"
    if err["type"] == "missing":
        return f"{key}: missing"
    shown = repr(err.get("input"))
    if not err["loc"] or err["type"] == "value_error" and (isinstance(err.get("input"), dict) or len(shown) > 60):
        return f"{key}: {text}" if key else text
    return f"{key} = {shown}: {text[:1].lower() + text[1:]}"


def parse_params(params: Any, where: str = "params") -> Params:
    """The typed params; ParamsError naming the first broken key, its value and what is allowed (and how many
    more)."""
    if not isinstance(params, dict):
        raise ParamsError(f"{where}: expected a mapping of sections, got {type(params).__name__}")
    try:
        parsed = Params.model_validate(params)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        first = _message(errors[0])
        more = f" (and {len(errors) - 1} more: {', '.join(_message(x) for x in errors[1:3])}"
        more += ", ..." if len(errors) > 3 else ""
        raise ParamsError(f"{where}: {first}{more + ')' if len(errors) > 1 else ''}") from None
    parsed._place("")
    return parsed


def is_labelbudget(params: Any) -> bool:
    """False for another pipeline driven by the same flows (the tests' toy project): not this schema."""
    return isinstance(params, dict) and bool(OWN_SECTIONS & set(params))


def check_params(params: Any, where: str = "params") -> None:
    """`parse_params` for a mapping that may belong to another pipeline (the flows drive any DVC project)."""
    if not isinstance(params, dict) or is_labelbudget(params):
        parse_params(params, where)


def _known_keys(loc: tuple) -> list[str]:
    """The keys the section holding `loc` allows (entries of `models` and `upstreams` are sections too)."""
    sections = {(): Params, ("models",): None, ("upstreams",): None}
    cls: type[BaseModel] | None = Params
    path: tuple = ()
    for part in loc[:-1]:
        path = (*path, part)
        if path[:1] in (("models",), ("upstreams",)) and len(path) == 2:
            cls = Model if path[0] == "models" else Upstream
            continue
        field = next((f for n, f in (cls.model_fields.items() if cls else []) if (f.alias or n) == part), None)
        cls = field.annotation if field and isinstance(field.annotation, type) else sections.get(path)
    return [f.alias or n for n, f in cls.model_fields.items()] if cls else []
