"""Target declarations: ``netlab.toml``, ``[tool.netlab]`` and the TARGET forms.

This module turns each ``--netlab-target`` value into :class:`TargetSpec`
objects (SPEC 2.1, 2.2): a declared NAME, a DIR or glob of DIRs, an inline
command, the address of a running server, or ``reference[:SUITE]``. Every
mistake becomes a :class:`~pytest_netlab.errors.ConfigError` that names the
file, the target and the key, and lists what is valid.

This module must not start anything; it only reads and validates.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ConfigError
from .placeholders import check_placeholders, placeholders_in, split_command
from .registry import Suite

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["TargetSpec", "Address", "resolve_targets", "load_declarations", "fixtures_root", "TARGET_KEYS"]

DECLARATION_FILE = "netlab.toml"

#: Every key a target declaration may hold, with its meaning (shown on errors).
TARGET_KEYS: Mapping[str, str] = {
    "command": "the command that starts the target, with placeholders",
    "address": "tcp://H:P, udp://H:P or http(s)://H:P/ of a server that is already running",
    "suites": "list of suites that apply",
    "ready": '"tcp", "udp", "stdout:REGEX" or "delay:SECONDS"',
    "startup_timeout": "seconds to wait until the target is ready (default 10)",
    "cwd": "working directory, relative to the declaring file",
    "env": "table of extra environment variables",
    "host": 'address a server target listens on (default "127.0.0.1")',
    "limits": "table: cpu_seconds, memory_mb, processes, file_size_mb, open_files",
    "points": "table: check-id glob -> points for matching checks",
    "expect_fail": "check-id globs this target is known to fail (xfail; a pass is an error)",
    "bug": "one sentence: the deliberate bug of a faulty implementation",
    "requires": "executables that must be on PATH, else the target is skipped",
}
LIMIT_KEYS = ("cpu_seconds", "memory_mb", "processes", "file_size_mb", "open_files")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ADDRESS = re.compile(r"^(?P<scheme>tcp|udp|http|https)://(?P<host>\[[0-9a-fA-F:]+\]|[^/:\[\]]+):(?P<port>\d{1,5})(?P<path>/.*)?$")
_READY = re.compile(r"^(tcp|udp|stdout:.+|delay:\d+(\.\d+)?)$")
DEFAULT_STARTUP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Address:
    """Where an already-running server listens."""

    scheme: str
    host: str
    port: int
    path: str = "/"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path if self.scheme.startswith('http') else ''}"


@dataclass(frozen=True)
class TargetSpec:
    """A validated declaration of one thing to check.

    Attributes:
        name: unique display name, used in node ids and reports.
        origin: the ``--netlab-target`` value it came from (for reproduce lines).
        source: the file that declared it, or ``--netlab-target``.
        command: the command template, or None for an address target.
        address: the running server, or None for a command target.
        suites: the suites that apply.
        ready: the ready probe, or None for the suite's default.
        startup_timeout: seconds until it must be ready.
        cwd: its working directory.
        env: extra environment variables.
        host: the address a server target listens on.
        limits: resource limits (see ``LIMIT_KEYS``).
        points: check-id glob -> points overrides.
        expect_fail: check-id globs it is known to fail.
        bug: the documented bug of a faulty implementation.
        requires: executables it needs on PATH.
    """

    name: str
    origin: str
    source: str
    command: str | None
    address: Address | None
    suites: tuple[str, ...]
    ready: str | None = None
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    cwd: Path = field(default_factory=Path.cwd)
    env: Mapping[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    limits: Mapping[str, int] = field(default_factory=dict)
    points: Mapping[str, float] = field(default_factory=dict)
    expect_fail: tuple[str, ...] = ()
    bug: str = ""
    requires: tuple[str, ...] = ()

    @property
    def launched(self) -> bool:
        """True when we start the target ourselves (lifecycle checks apply)."""
        return self.command is not None

    def missing_requirements(self) -> list[str]:
        """Executables in ``requires`` that are not on PATH."""
        return [name for name in self.requires if shutil.which(name) is None]


def fixtures_root() -> Path:
    """The folder holding the bundled reference and faulty implementations."""
    import pytest_netlab.fixtures as fixtures

    return Path(fixtures.__file__).resolve().parent


def resolve_targets(
    values: Iterable[str],
    *,
    rootdir: Path,
    invocation_dir: Path,
    suites: Mapping[str, Suite],
    selected_suites: tuple[str, ...],
) -> list[TargetSpec]:
    """Turn every ``--netlab-target`` value into target specs, validated against the suites."""
    specs: list[TargetSpec] = []
    for value in values:
        specs.extend(_resolve_one(value, rootdir, invocation_dir, suites, selected_suites))
    seen: set[str] = set()
    unique: list[TargetSpec] = []
    for spec in specs:
        name, n = spec.name, 2
        while name in seen:
            name, n = f"{spec.name}-{n}", n + 1
        seen.add(name)
        unique.append(spec if name == spec.name else _replace(spec, name=name))
    for spec in unique:
        _check_against_suites(spec, suites, selected_suites)
    return unique


def _resolve_one(value: str, rootdir: Path, cwd: Path, suites: Mapping[str, Suite], selected: tuple[str, ...]) -> list[TargetSpec]:
    value = value.strip()
    if not value:
        raise ConfigError("empty target", source="--netlab-target")
    if value == "reference" or value.startswith("reference:"):
        return _reference_targets(value, suites, selected)
    match = _ADDRESS.match(value)
    if match:
        return [_address_target(value, match, suites, selected)]
    if "://" in value:
        raise ConfigError(
            f"{value!r} is not a valid address; use tcp://HOST:PORT, udp://HOST:PORT or http(s)://HOST:PORT/",
            source="--netlab-target",
        )
    if "{" in value:
        return [_inline_target(value, cwd, selected, suites)]
    paths = _matching_dirs(value, cwd)
    if paths:
        specs: list[TargetSpec] = []
        for path in paths:
            specs.extend(_directory_targets(path, cwd))
        return specs
    if any(ch in value for ch in "*?["):
        raise ConfigError(f"the glob {value!r} matches no directory", source="--netlab-target")
    return [_named_target(value, rootdir, cwd)]


def _named_target(name: str, rootdir: Path, cwd: Path) -> TargetSpec:
    declared: dict[str, TargetSpec] = {}
    files: list[str] = []
    for base in dict.fromkeys([cwd, rootdir]):
        toml_file = base / DECLARATION_FILE
        if toml_file.is_file():
            files.append(str(toml_file))
            for spec in load_declarations(toml_file, origin=name):
                declared.setdefault(spec.name, spec)
        pyproject = base / "pyproject.toml"
        if pyproject.is_file():
            table = _read_toml(pyproject).get("tool", {}).get("netlab")
            if table:
                files.append(f"{pyproject} [tool.netlab]")
                for spec in _parse_declarations(table, pyproject, origin=name, prefix="tool.netlab."):
                    declared.setdefault(spec.name, spec)
    if name in declared:
        return declared[name]
    where = ", ".join(files) if files else f"no {DECLARATION_FILE} or [tool.netlab] in pyproject.toml under {rootdir}"
    names = ", ".join(sorted(declared)) or "none"
    raise ConfigError(
        f"no target called {name!r} (looked in: {where}; declared targets: {names}). A target is a declared NAME, "
        "a DIR holding netlab.toml, a command containing {port}, tcp://H:P, udp://H:P, http(s)://H:P/, or reference[:SUITE]",
        source="--netlab-target",
    )


def load_declarations(file: Path, *, origin: str) -> list[TargetSpec]:
    """Read and validate every target declared in a ``netlab.toml``."""
    return _parse_declarations(_read_toml(file), file, origin=origin)


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        with open(file, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"not valid TOML: {error}", source=str(file)) from None
    except OSError as error:
        raise ConfigError(f"cannot read: {error.strerror}", source=str(file)) from None


def _parse_declarations(document: Mapping[str, Any], file: Path, *, origin: str, prefix: str = "") -> list[TargetSpec]:
    source = str(file)
    unknown = sorted(set(document) - {"targets", "defaults", "submission"})
    if unknown:
        raise ConfigError(
            f"unknown table [{prefix}{unknown[0]}]; valid tables: [{prefix}targets.NAME], [{prefix}defaults], [{prefix}submission]",
            source=source,
        )
    defaults = document.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"[{prefix}defaults] must be a table", source=source)
    targets = document.get("targets", {})
    if not isinstance(targets, dict) or (not targets and "submission" not in document):
        raise ConfigError(f"declares no targets; add a [{prefix}targets.NAME] table with a command", source=source)
    specs = []
    for name, table in targets.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[{prefix}targets.{name}] must be a table", source=source)
        if not _NAME.match(name):
            raise ConfigError("target names use letters, digits, '_', '.' and '-'", source=source, target=name)
        specs.append(_parse_target(name, {**defaults, **table}, file, origin))
    return specs


def _parse_target(name: str, table: Mapping[str, Any], file: Path, origin: str, base: Path | None = None) -> TargetSpec:
    source = str(file)
    base = base or file.parent

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, source=source, target=name, key=key)

    for key in table:
        if key not in TARGET_KEYS:
            valid = ", ".join(TARGET_KEYS)
            raise fail(key, f"unknown key; valid keys: {valid}")

    def get(key: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = table.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
            raise fail(key, f"must be {what}, not {type(value).__name__} {value!r}")
        return value

    command = get("command", str, "a string")
    address_text = get("address", str, "a string")
    if command is None and address_text is None:
        raise fail("command", "missing: every target needs a command (or the address of a running server)")
    if command is not None and address_text is not None:
        raise fail("address", "give either command or address, not both")
    address = None
    if command is not None:
        check_placeholders(command, source=source, target=name)
        split_command(command, source=source, target=name)
    else:
        match = _ADDRESS.match(address_text)
        if not match:
            raise fail("address", "must be tcp://HOST:PORT, udp://HOST:PORT or http(s)://HOST:PORT/")
        address = _address_from_match(match)
    suites = get("suites", list, "a list of suite names") or []
    if not all(isinstance(s, str) for s in suites):
        raise fail("suites", "must be a list of suite names (strings)")
    ready = get("ready", str, "a string")
    if ready is not None and not _READY.match(ready):
        raise fail("ready", f'{ready!r} is not a ready probe; use {TARGET_KEYS["ready"]}')
    startup_timeout = get("startup_timeout", (int, float), "a number of seconds")
    if startup_timeout is not None and not 0 < startup_timeout <= 600:
        raise fail("startup_timeout", "must be between 0 and 600 seconds")
    cwd_text = get("cwd", str, "a path")
    cwd = (base / cwd_text).resolve() if cwd_text else base.resolve()
    if cwd_text and not cwd.is_dir():
        raise fail("cwd", f"{cwd} is not a directory")
    env = get("env", dict, "a table of strings") or {}
    for key, value in env.items():
        if not isinstance(value, str):
            raise fail("env", f"{key} must be a string, not {type(value).__name__}")
    limits = get("limits", dict, "a table") or {}
    for key, value in limits.items():
        if key not in LIMIT_KEYS:
            raise fail("limits", f"unknown limit {key!r}; valid limits: {', '.join(LIMIT_KEYS)}")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise fail("limits", f"{key} must be a positive whole number")
    points = get("points", dict, "a table of check-id glob = points") or {}
    for key, value in points.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise fail("points", f"{key} must be a number >= 0")
    expect_fail = get("expect_fail", list, "a list of check-id globs") or []
    requires = get("requires", list, "a list of executable names") or []
    host = get("host", str, "an address") or "127.0.0.1"
    return TargetSpec(
        name=name,
        origin=origin,
        source=source,
        command=command,
        address=address,
        suites=tuple(suites),
        ready=ready,
        startup_timeout=float(startup_timeout or DEFAULT_STARTUP_TIMEOUT),
        cwd=cwd,
        env=dict(env),
        host=host,
        limits=dict(limits),
        points={k: float(v) for k, v in points.items()},
        expect_fail=tuple(str(x) for x in expect_fail),
        bug=get("bug", str, "a string") or "",
        requires=tuple(str(x) for x in requires),
    )


def _directory_targets(path: Path, cwd: Path) -> list[TargetSpec]:
    """The targets of one DIR: its own declarations, the submissions below a
    ``[submission]`` template, or the template of the folder above it."""
    label = _display(path, cwd)
    file = path / DECLARATION_FILE
    if file.is_file():
        document = _read_toml(file)
        specs = [_replace(spec, name=f"{label}:{spec.name}") for spec in _parse_declarations(document, file, origin=label)]
        if "submission" in document:
            for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
                specs.extend(_directory_targets(sub, cwd))
        return specs
    template_file = path.parent / DECLARATION_FILE
    if template_file.is_file():
        document = _read_toml(template_file)
        template = document.get("submission")
        if isinstance(template, dict):
            defaults = document.get("defaults", {})
            return [_parse_target(label, {**defaults, **template}, template_file, label, base=path)]
    raise ConfigError(
        f"directory {label} holds no {DECLARATION_FILE}, and {_display(path.parent, cwd)}/{DECLARATION_FILE} has no [submission] template",
        source="--netlab-target",
    )


def _reference_targets(value: str, suites: Mapping[str, Suite], selected: tuple[str, ...]) -> list[TargetSpec]:
    _, _, wanted = value.partition(":")
    if wanted and wanted not in suites:
        raise ConfigError(f"unknown suite {wanted!r} in {value!r}; suites: {', '.join(suites)}", source="--netlab-target")
    names = [wanted] if wanted else [s for s in suites if not selected or s in selected]
    specs = []
    for suite_name in names:
        file = fixtures_root() / suites[suite_name].fixtures_dir / DECLARATION_FILE
        if not file.is_file():
            continue
        for spec in load_declarations(file, origin=value):
            if spec.name == "reference":
                specs.append(_replace(spec, name=f"reference:{suite_name}", suites=(suite_name,)))
    if not specs:
        raise ConfigError(f"no reference implementation for {value!r}; suites: {', '.join(suites)}", source="--netlab-target")
    return specs


def _address_target(value: str, match: re.Match[str], suites: Mapping[str, Suite], selected: tuple[str, ...]) -> TargetSpec:
    address = _address_from_match(match)
    chosen = selected or (("http-server",) if address.scheme.startswith("http") and "http-server" in suites else ())
    if not chosen:
        raise ConfigError(
            f"{value!r} is a running server; say which suites apply with --netlab-suite (suites: {', '.join(suites)})",
            source="--netlab-target",
        )
    name = f"{address.host}:{address.port}"
    return TargetSpec(name=name, origin=value, source="--netlab-target", command=None, address=address, suites=tuple(chosen), host=address.host)


def _inline_target(command: str, cwd: Path, selected: tuple[str, ...], suites: Mapping[str, Suite]) -> TargetSpec:
    check_placeholders(command, source="--netlab-target", target="", key="")
    words = split_command(command, source="--netlab-target", target="")
    if not selected:
        raise ConfigError(
            f"the inline command {command!r} needs --netlab-suite to say what it implements (suites: {', '.join(suites)})",
            source="--netlab-target",
        )
    return TargetSpec(name=_inline_name(words), origin=command, source="--netlab-target", command=command, address=None, suites=selected, cwd=cwd)


def _inline_name(words: list[str]) -> str:
    for word in words:
        if not placeholders_in(word) and not word.startswith("-"):
            base = os.path.basename(word.rstrip("/")) or word
            if base.startswith("python") and len(words) > 1:
                continue
            return re.sub(r"[^A-Za-z0-9_.-]", "_", base)[:40] or "command"
    return "command"


def _matching_dirs(value: str, cwd: Path) -> list[Path]:
    pattern = value if os.path.isabs(value) else str(cwd / value)
    if any(ch in value for ch in "*?["):
        return [Path(p).resolve() for p in sorted(glob.glob(pattern)) if Path(p).is_dir()]
    path = Path(pattern)
    return [path.resolve()] if path.is_dir() else []


def _check_against_suites(spec: TargetSpec, suites: Mapping[str, Suite], selected: tuple[str, ...]) -> None:
    source = spec.source
    target = "" if spec.source == "--netlab-target" else spec.name.rsplit(":", 1)[-1]
    declared = spec.suites or selected
    if not declared:
        raise ConfigError(f"no suites: add suites = [...] or pass --netlab-suite (suites: {', '.join(suites)})", source=source, target=target, key="suites")
    for name in declared:
        if name not in suites:
            raise ConfigError(f"unknown suite {name!r}; suites: {', '.join(suites)}", source=source, target=target, key="suites")
    if spec.command is None:
        return
    for name in declared:
        provided = set(suites[name].placeholders) | {"python"}
        for placeholder in placeholders_in(spec.command):
            if placeholder not in provided:
                offered = " ".join("{" + p + "}" for p in sorted(provided))
                raise ConfigError(
                    f"the command uses {{{placeholder}}}, which suite {name} does not provide; it provides {offered}",
                    source=source,
                    target=target,
                    key="command",
                )


def _address_from_match(match: re.Match[str]) -> Address:
    host = match.group("host").strip("[]")
    port = int(match.group("port"))
    if not 0 < port < 65536:
        raise ConfigError(f"port {port} is out of range", source="--netlab-target")
    return Address(match.group("scheme"), host, port, match.group("path") or "/")


def _replace(spec: TargetSpec, **changes: Any) -> TargetSpec:
    from dataclasses import replace

    return replace(spec, **changes)


def _display(path: Path, cwd: Path) -> str:
    try:
        return os.path.relpath(path, cwd) if str(path).startswith(str(cwd)) else str(path)
    except ValueError:
        return str(path)
