"""Command-line options and their ini twins, and the settings they resolve to.

Every ``--netlab-*`` flag is declared once in :data:`OPTIONS`, from which both
the command-line option and its ``netlab_*`` ini key are built (one help text
for both, as pytest-timeout does). :func:`resolve_settings` applies the
precedence command line > ini > default and validates every value, raising
:class:`~pytest_netlab.errors.ConfigError` that names where the bad value
came from.

This module must not start targets or read ``netlab.toml``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from .errors import ConfigError

__all__ = ["Option", "OPTIONS", "Settings", "add_options", "resolve_settings", "CAPTURE_MODES"]

CAPTURE_MODES = ("off", "on-failure", "always")


@dataclass(frozen=True)
class Option:
    """One ``--netlab-NAME`` flag and its ``netlab_NAME`` ini twin."""

    name: str
    help: str
    kind: str  # "list" (repeatable), "csv", "bool", "int", "float", "choice", "path", "str"
    default: Any = None
    metavar: str = ""
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return f"--netlab-{self.name}"

    @property
    def ini(self) -> str:
        return f"netlab_{self.name.replace('-', '_')}"

    @property
    def dest(self) -> str:
        return self.ini


OPTIONS: tuple[Option, ...] = (
    Option(
        "target",
        "what to check: a NAME declared in netlab.toml, a DIR (or glob of DIRs) holding a netlab.toml, "
        "a command containing {port}, tcp://H:P, udp://H:P, http(s)://H:P/ for a running server, or "
        "reference[:SUITE] for the bundled reference implementations. Repeatable.",
        "list",
        metavar="TARGET",
    ),
    Option("suite", "comma-separated suites to run (default: those the target declares)", "csv", metavar="SUITE[,SUITE]"),
    Option("check", "run only checks whose id matches this glob (repeatable), e.g. 'zen/framing/*'", "list", metavar="GLOB"),
    Option("skip", "skip checks whose id matches this glob (repeatable)", "list", metavar="GLOB"),
    Option("strict", "fail the run on unmet SHOULD checks, not only on MUST checks", "bool", default=False),
    Option("seed", "seed for every random choice (split points, payloads, loss); printed in the header", "int", metavar="N"),
    Option(
        "timeout-scale",
        "multiply every protocol timeout by X on slow or busy machines (default 1.0)",
        "float",
        default=1.0,
        metavar="X",
    ),
    Option(
        "capture",
        "keep loopback packet captures: off, on-failure (default where capture works) or always",
        "choice",
        default="on-failure",
        metavar="off|on-failure|always",
        choices=CAPTURE_MODES,
    ),
    Option("report", "write a JSON report of every target and check to PATH", "path", metavar="PATH"),
    Option(
        "gradebook",
        "write a gradebook to PATH (.csv or .md): one row per target, one column per check group, and the total",
        "path",
        metavar="PATH",
    ),
    Option(
        "shard",
        "check only shard K of N of the targets (sorted by name), to split a class over machines or CI jobs",
        "str",
        metavar="K/N",
    ),
    Option(
        "gradescope",
        "write Gradescope's results.json to PATH ('{target}' in PATH gives one file per target)",
        "path",
        metavar="PATH",
    ),
)


def add_options(parser: pytest.Parser) -> None:
    """Register every option and its ini twin in one ``netlab`` group."""
    group = parser.getgroup("netlab", "network protocol conformance (pytest-netlab)")
    for option in OPTIONS:
        kwargs: dict[str, Any] = {"dest": option.dest, "help": option.help}
        if option.kind == "bool":
            kwargs["action"] = "store_true"
            kwargs["default"] = None
        else:
            kwargs["action"] = "append" if option.kind == "list" else "store"
            kwargs["metavar"] = option.metavar or option.name.upper()
        if option.kind == "choice":
            kwargs["choices"] = list(option.choices)
        group.addoption(option.flag, **kwargs)
        ini_type = {"list": "linelist", "bool": "bool"}.get(option.kind, "string")
        parser.addini(option.ini, f"{option.help} (twin of {option.flag})", type=ini_type, default=None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Settings:
    """The effective netlab settings of a run, after precedence and validation."""

    targets: tuple[str, ...]
    suites: tuple[str, ...]
    check_globs: tuple[str, ...]
    skip_globs: tuple[str, ...]
    strict: bool
    seed: int | None
    timeout_scale: float
    capture: str
    capture_explicit: bool
    report: str | None
    gradescope: str | None
    gradebook: str | None
    shard: tuple[int, int] | None

    @property
    def active(self) -> bool:
        """True when the run checks at least one target."""
        return bool(self.targets)


def resolve_settings(config: pytest.Config) -> Settings:
    """Read every option with precedence command line > ini > default, and validate it."""
    raw: dict[str, Any] = {}
    source: dict[str, str] = {}
    for option in OPTIONS:
        value, where = _lookup(config, option)
        raw[option.name] = value
        source[option.name] = where

    def convert(name: str, func: Callable[[Any], Any], what: str) -> Any:
        value = raw[name]
        if value is None:
            return None
        try:
            return func(value)
        except (TypeError, ValueError):
            option = next(o for o in OPTIONS if o.name == name)
            label = option.flag if source[name] == "command line" else option.ini
            raise ConfigError(f"{value!r} is not {what}", source=source[name], key=label) from None

    seed = convert("seed", int, "a whole number")
    scale = convert("timeout-scale", float, "a number")
    if scale is None:
        scale = 1.0
    if not 0.1 <= scale <= 100:
        option_label = "--netlab-timeout-scale" if source["timeout-scale"] == "command line" else "netlab_timeout_scale"
        raise ConfigError(f"{scale} is out of range; use a factor between 0.1 and 100", source=source["timeout-scale"], key=option_label)
    capture = raw["capture"] or "on-failure"
    if capture not in CAPTURE_MODES:
        raise ConfigError(f"{capture!r} is not one of {', '.join(CAPTURE_MODES)}", source=source["capture"], key="netlab_capture")
    return Settings(
        targets=tuple(_as_list(raw["target"])),
        suites=tuple(_split_csv(raw["suite"])),
        check_globs=tuple(_as_list(raw["check"])),
        skip_globs=tuple(_as_list(raw["skip"])),
        strict=bool(raw["strict"]),
        seed=seed,
        timeout_scale=scale,
        capture=capture,
        capture_explicit=source["capture"] != "default",
        report=raw["report"] or None,
        gradescope=raw["gradescope"] or None,
        gradebook=_gradebook_path(raw["gradebook"], source["gradebook"]),
        shard=_parse_shard(raw["shard"], source["shard"]),
    )


def _gradebook_path(value: str | None, where: str) -> str | None:
    if not value:
        return None
    if not value.endswith((".csv", ".md")):
        key = "--netlab-gradebook" if where == "command line" else "netlab_gradebook"
        raise ConfigError(f"{value!r} must end in .csv or .md (the format follows the name)", source=where, key=key)
    return value


def _parse_shard(value: str | None, where: str) -> tuple[int, int] | None:
    if not value:
        return None
    key = "--netlab-shard" if where == "command line" else "netlab_shard"
    shard, _, count = value.partition("/")
    try:
        k, n = int(shard), int(count)
    except ValueError:
        raise ConfigError(f"{value!r} is not K/N (for example 2/4: the second of four shards)", source=where, key=key) from None
    if not 1 <= k <= n:
        raise ConfigError(f"{value!r}: K must be between 1 and N", source=where, key=key)
    return k, n


def _lookup(config: pytest.Config, option: Option) -> tuple[Any, str]:
    value = config.getoption(option.dest, default=None)
    if value not in (None, [], ""):
        return value, "command line"
    ini_value = config.getini(option.ini)
    if ini_value not in (None, [], ""):
        where = os.fspath(config.inipath) if config.inipath else "ini file"
        if option.kind == "bool" and isinstance(ini_value, str):
            ini_value = ini_value.strip().lower() in ("1", "true", "yes", "on")
        return ini_value, where
    return option.default, "default"


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value if str(v).strip()]


def _split_csv(value: Any) -> list[str]:
    items: list[str] = []
    for chunk in _as_list(value):
        items.extend(part.strip() for part in chunk.split(",") if part.strip())
    return items
