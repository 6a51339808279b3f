"""SimConfig: the simulated gateway's behaviour, one immutable value validated on creation.

The running server swaps the whole value on update (``SimServer.update``, ``POST
/_sim/config``), so a handler always sees one consistent configuration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .kinds import DEFAULT_FAULT_KINDS, FAULT_KINDS
from .structured_kinds import RESPONSE_FORMAT_SUPPORT, SCHEMA_FAULTS


@dataclass(frozen=True)
class SimConfig:
    """Behaviour of the simulated gateway; immutable, swapped whole on update."""

    latency_s: float = 0.05
    latency_jitter: float = 0.0
    fault_rate: float = 0.0
    fault_attempts: int = 1
    fault_kinds: tuple[str, ...] = DEFAULT_FAULT_KINDS
    retry_after_s: float | None = 1.0
    hang_s: float = 3600.0
    seed: int = 0
    api_key: str | None = None
    rpm: int | None = None
    capacity: int | None = None
    quota_requests: int | None = None
    quota_style: str = "401"
    no_channel: bool = False
    # models this key's group has no channel for (503 "无可用渠道" for them alone; issue 15)
    no_channel_models: tuple[str, ...] = ()
    missing_models: tuple[str, ...] = ()  # models answered 404 model_not_found
    stream_usage: bool = True
    models_shape: str = "openai"
    models: tuple[str, ...] = ("gpt-4o-all", "gpt-4-all", "gpt-4o", "gpt-4o-mini")
    model_alias: tuple[tuple[str, str], ...] = (("gpt-4-all", "gpt-4o"),)
    hard_limit_usd: float = 100.0
    used_usd: float = 12.5
    # keep every parsed chat request body (GET /_sim/bodies, SimServer.bodies()) so
    # tests can assert on what the client sent; off by default to keep bench memory flat
    record_bodies: bool = False
    # structured answers (.structured): what the gateway does with response_format, and answer faults
    response_format: str = "accept"  # accept | reject (400 naming it) | ignore (prose)
    schema_fault_rate: float = 0.0
    schema_fault_kinds: tuple[str, ...] = SCHEMA_FAULTS

    def __post_init__(self) -> None:
        # JSON (the /_sim/config endpoint, job files) delivers lists and dicts, a CLI
        # flag "500,503": normalise so the dataclass stays hashable and comparable.
        set_ = object.__setattr__
        set_(self, "fault_kinds", _names(self.fault_kinds))
        set_(self, "schema_fault_kinds", _names(self.schema_fault_kinds))
        set_(self, "models", _names(self.models))
        set_(self, "no_channel_models", _names(self.no_channel_models))
        set_(self, "missing_models", _names(self.missing_models))
        set_(self, "model_alias", _pairs(self.model_alias))
        _validate(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SimConfig:
        """Build from a (JSON/TOML) dict; missing keys keep defaults, unknown keys raise."""
        return cls().with_changes(d)

    def with_changes(self, changes: Mapping[str, Any]) -> SimConfig:
        """Return a copy with ``changes`` applied; unknown keys raise ValueError."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown simulator setting(s): {', '.join(unknown)}")
        # quota_style is documented as a string but "403" arrives as 403 from TOML/CLI.
        fixed: dict[str, Any] = {k: (str(v) if k == "quota_style" else v) for k, v in changes.items()}
        return dataclasses.replace(self, **fixed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``from_dict(to_dict())`` gives an equal config."""
        d = dataclasses.asdict(self)
        d["fault_kinds"] = list(self.fault_kinds)
        d["schema_fault_kinds"] = list(self.schema_fault_kinds)
        d["models"] = list(self.models)
        d["no_channel_models"] = list(self.no_channel_models)
        d["missing_models"] = list(self.missing_models)
        d["model_alias"] = [list(p) for p in self.model_alias]
        return d


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    return tuple(str(v) for v in value)


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    items: Iterable[Any] = value.items() if isinstance(value, Mapping) else value
    pairs: list[tuple[str, str]] = []
    for pair in items:
        if len(pair) != 2:
            raise ValueError(f"model_alias entries must be (requested, reported) pairs: {pair!r}")
        pairs.append((str(pair[0]), str(pair[1])))
    return tuple(pairs)


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _validate(cfg: SimConfig) -> None:
    _check_numbers(cfg)
    _check_integers(cfg)
    _check_choices(cfg)


def _check_numbers(cfg: SimConfig) -> None:
    for name in ("latency_s", "hang_s", "retry_after_s", "hard_limit_usd", "used_usd"):
        value = getattr(cfg, name)
        if value is None and name == "retry_after_s":
            continue
        if not _is_number(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    for name in ("latency_jitter", "fault_rate", "schema_fault_rate"):
        value = getattr(cfg, name)
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {value!r}")


def _check_integers(cfg: SimConfig) -> None:
    for name in ("fault_attempts", "seed", "rpm", "capacity", "quota_requests"):
        value = getattr(cfg, name)
        if value is None and name not in ("fault_attempts", "seed"):
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if name != "seed" and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")


def _check_choices(cfg: SimConfig) -> None:
    unknown = [k for k in cfg.fault_kinds if k not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {list(FAULT_KINDS)}")
    if cfg.fault_rate > 0 and not cfg.fault_kinds:
        raise ValueError("fault_rate > 0 needs at least one fault kind")
    bad = [k for k in cfg.schema_fault_kinds if k not in SCHEMA_FAULTS]
    if bad or (cfg.schema_fault_rate > 0 and not cfg.schema_fault_kinds):
        raise ValueError(f"schema_fault_kinds must be some of {list(SCHEMA_FAULTS)}, got {bad or 'none'}")
    if cfg.response_format not in RESPONSE_FORMAT_SUPPORT:
        raise ValueError(f"response_format must be one of {list(RESPONSE_FORMAT_SUPPORT)}, got {cfg.response_format!r}")
    if cfg.quota_style not in ("401", "403"):
        raise ValueError(f"quota_style must be '401' or '403', got {cfg.quota_style!r}")
    if cfg.models_shape not in ("openai", "newapi"):
        raise ValueError(f"models_shape must be 'openai' or 'newapi', got {cfg.models_shape!r}")
    if cfg.api_key is not None and not isinstance(cfg.api_key, str):
        raise ValueError("api_key must be a string or None")
