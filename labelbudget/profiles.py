"""Profiles as overlays, composed into params.yaml with DVC's own Hydra composition.

`conf/config.yaml` is the base (the default experiment, documented key by key); `conf/profile/<name>.yaml`
holds only what a profile changes. `compose` runs exactly what `dvc exp run -S profile=<name> -S key=value`
runs (dvc.utils.hydra.compose_and_dump), so `labelbudget run --profile P --set key=value` and DVC's
experiments write the same params.yaml. Each composition is `conf/` plus the overrides given, nothing else.

params.yaml stays the one file DVC tracks. A user's direct edits to it are never discarded silently: before
writing, `write_params` compares params.yaml with the composition it last wrote and refuses when they differ,
naming the keys (pass them as `--set`, put them in conf/, or force).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from labelbudget import dvcapi
from labelbudget.errors import LabelbudgetError
from labelbudget.schema import Params, check_params, is_labelbudget, parse_params

CONF_DIR = "conf"
CONFIG_NAME = "config"
PARAMS = "params.yaml"
STATE = Path(".dvc") / "tmp" / "labelbudget-params.json"  # what the last composition was made of
HEADER = ("# Composed from conf/ (profile {profile}{sets}) by `labelbudget profile` / `labelbudget run`.\n"
          "# The keys are documented in conf/config.yaml. Edit conf/, or pass --set key=value; direct edits\n"
          "# here are kept until the next composition, which refuses to discard them without --force.\n")


class ProfileError(LabelbudgetError, ValueError):
    pass


def available_profiles(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / CONF_DIR / "profile").glob("*.yaml"))


def _known(root: Path, profile: str) -> None:
    if profile not in available_profiles(root):
        raise ProfileError(f"unknown profile {profile!r}; available: {', '.join(available_profiles(root))}")


def compose(root: Path, profile: str | None = None, overrides: list[str] | tuple[str, ...] = (),
            check: bool = True) -> dict:
    """The params of `profile` (default: the base's default) with Hydra `overrides` (`key=value`,
    `~key`, `+key=value`), checked against the schema unless `check` is False."""
    if profile is not None:
        _known(root, profile)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / PARAMS
        _compose_to(root, out, [*([f"profile={profile}"] if profile else []), *overrides])
        params = yaml.safe_load(out.read_text())
    if check:
        check_params(params, where="composed params")
    return params


def _compose_to(root: Path, out: Path, overrides: list[str]) -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        dvcapi.compose_params(out, (root / CONF_DIR).resolve(), CONFIG_NAME, root, overrides)
    except (HydraException, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0]
        raise ProfileError(f"cannot compose params from {root / CONF_DIR} with {overrides}: {first}") from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def _state(root: Path) -> dict:
    path = root / STATE
    return json.loads(path.read_text()) if path.exists() else {}


def current(root: Path) -> tuple[str, list[str]]:
    """The profile and overrides params.yaml was last composed from (the profile it names, if no record)."""
    state = _state(root)
    if state:
        return state["profile"], list(state["overrides"])
    params = yaml.safe_load((root / PARAMS).read_text()) if (root / PARAMS).exists() else {}
    return (params or {}).get("profile", "default"), []


def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two params trees."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in dict.fromkeys([*a, *b])
                for k in diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def unsaved_edits(root: Path) -> list[str]:
    """Keys of params.yaml that differ from the composition it was last written from."""
    path = root / PARAMS
    if not path.exists():
        return []
    state = _state(root)
    if state and state.get("sha256") == _sha256(path):
        return []
    profile, overrides = current(root)
    try:
        expected = compose(root, profile, overrides)
    except ProfileError:
        expected = {}
    return diff(yaml.safe_load(path.read_text()) or {}, expected)


def write_params(root: Path, profile: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                 force: bool = False, check: Callable[[Params], None] | None = None) -> Path:
    """Compose `profile` (default: the current one) with `overrides` into params.yaml, atomically; refuse to
    overwrite direct edits of params.yaml unless `force`. `check` runs on the composed params before anything
    is written (a run checks that files the params name exist)."""
    profile = profile or current(root)[0]
    _known(root, profile)
    path = root / PARAMS
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".params.", suffix=".yaml")
    os.close(fd)
    try:
        # composed and checked before anything is compared or replaced: a bad override leaves params.yaml as is
        _compose_to(root, Path(tmp), [f"profile={profile}", *overrides])
        body = Path(tmp).read_text()
        composed = yaml.safe_load(body)
        check_params(composed, where="composed params")
        if check and is_labelbudget(composed):  # the flows also drive other DVC projects (the tests' toy one)
            check(parse_params(composed, where="composed params"))
        edits = [] if force else unsaved_edits(root)
        if edits:
            shown = ", ".join(edits[:8]) + (" ..." if len(edits) > 8 else "")
            raise ProfileError(f"{path} has edits that conf/ does not hold ({shown}); pass them with "
                               "--set key=value, put them in conf/, or add --force to discard them")
        sets = f"; --set {' '.join(overrides)}" if overrides else ""
        Path(tmp).write_text(HEADER.format(profile=profile, sets=sets) + body)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    state = root / STATE
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"profile": profile, "overrides": list(overrides), "sha256": _sha256(path)}))
    return path


def value(v: Any) -> str:
    """A params value in Hydra's override grammar (lists and mappings in flow style)."""
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def size_overrides(composed: dict, sizes: list[str]) -> list[str]:
    """Overrides that pre-train exactly `sizes` and keep one `ssl` upstream per size (added or dropped); for
    another pipeline's params (the tests' toy project), `ssl_sizes` alone."""
    if not is_labelbudget(composed):
        return [f"ssl_sizes={value(list(sizes))}"]
    params = parse_params(composed, where="composed params")
    ups, toplines = params.upstreams, params.toplines
    dropped = {n for n, s in ups.items() if s.kind == "ssl" and n not in toplines and (s.size or n) not in sizes}
    out = [f"ssl_sizes={value(list(sizes))}", *(f"~upstreams.{n}" for n in sorted(dropped))]
    out += [f"+upstreams.{n}={value({'kind': 'ssl', 'source': f'models/pretrain/{n}/model.pt'})}"
            for n in sizes if n not in ups]
    roles = {"smaller": params.report.smaller, "larger": params.report.larger, "baseline": params.report.baseline,
             "control": params.report.control}
    out += [f"report.{role}=null" for role, name in roles.items() if name in dropped]
    return out


def deep_merge(base: dict, overlay: dict) -> dict:
    """`overlay` over `base`: mappings merge key by key, anything else (lists included) is replaced."""
    out = dict(base)
    for k, v in overlay.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def compose_plain(root: Path, profile: str) -> dict:
    """The same composition without DVC or Hydra installed (the lent GPU hosts): base, then the overlay.
    A test checks that it equals `compose` for every profile."""
    base = yaml.safe_load((root / CONF_DIR / f"{CONFIG_NAME}.yaml").read_text())
    base.pop("defaults", None)
    overlay = yaml.safe_load((root / CONF_DIR / "profile" / f"{profile}.yaml").read_text()) or {}
    return deep_merge(base, overlay)
