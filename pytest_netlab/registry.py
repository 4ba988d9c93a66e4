"""The registry of suites and checks: ids, titles, severities, references, points.

A suite (``tcp-echo``, ``zen``...) is declared once in ``suites/<name>/`` with
:class:`Suite`, and its checks register themselves with :meth:`Suite.check`.
Everything that lists checks reads this registry: test collection, the
``--netlab-check``/``--netlab-skip`` globs, the reports, the README catalogue
and the proof matrix.

This module must not run checks or touch the network; it only describes them.
"""

from __future__ import annotations

import enum
import fnmatch
import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

if TYPE_CHECKING:
    from .context import CheckContext

__all__ = ["Severity", "Role", "Check", "Suite", "all_suites", "get_suite", "match_checks", "DEFAULT_POINTS"]

_ID_PART = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class Severity(str, enum.Enum):
    """How much a check matters: RFC 2119 words, plus INFO for observations."""

    MUST = "MUST"
    SHOULD = "SHOULD"
    INFO = "INFO"


class Role(str, enum.Enum):
    """What the target plays in a suite: the server we connect to, or the client we serve."""

    SERVER = "server"
    CLIENT = "client"


#: Default points per severity: an INFO check observes and earns nothing.
DEFAULT_POINTS: Mapping[Severity, float] = {Severity.MUST: 2.0, Severity.SHOULD: 1.0, Severity.INFO: 0.0}

CheckFunction = Callable[["CheckContext"], None]


@dataclass(frozen=True)
class Check:
    """One conformance check, with the metadata every report shows.

    Attributes:
        id: ``suite/group/name``, stable across releases.
        title: one line, what a conforming target does.
        severity: MUST, SHOULD or INFO.
        references: book chapters and RFC sections it enforces.
        role: server or client.
        points: default points (overridable per target).
        func: the check itself, ``func(ctx)``; raises on a violation.
        fresh_target: needs a target instance of its own (it stops,
            restarts or signals it), so it never shares one.
        needs: capabilities it needs: ``"lifecycle"`` (we start the
            target), ``"ipv6"``. A missing one makes it not applicable.
        timeout: seconds the check may take on an unloaded machine,
            before ``--netlab-timeout-scale``.
        doc: a longer explanation for the README catalogue.
    """

    id: str
    title: str
    severity: Severity
    references: tuple[str, ...]
    role: Role
    points: float
    func: CheckFunction = field(repr=False, compare=False)
    fresh_target: bool = False
    needs: frozenset[str] = frozenset()
    timeout: float = 30.0
    doc: str = ""

    @property
    def suite(self) -> str:
        return self.id.split("/")[0]

    @property
    def group(self) -> str:
        return self.id.split("/")[1]

    @property
    def name(self) -> str:
        return self.id.split("/")[2]


@dataclass
class Suite:
    """A bundled conformance suite: a protocol, a role, and its checks.

    Example::

        SUITE = Suite("tcp-echo", Role.SERVER, title="TCP echo (RFC 862)",
                      placeholders=("host", "port"))

        @SUITE.check("echo", "byte-exact", title="echoes every byte unchanged",
                     references=("RFC 862",))
        def check_byte_exact(ctx): ...

    Attributes:
        name: the suite id used in ``--netlab-suite`` and check ids.
        role: what the target plays.
        title: one line for listings.
        placeholders: the command placeholders this suite fills in.
        ready: the default ready probe for its targets (``tcp``, ``udp``).
        description: what the target must speak (README text).
        prepare: for a server suite, ``prepare(instance) -> {placeholder: value}``
            called before each start of a target instance, with the instance's
            own directory in ``instance.workdir`` (write certificates or a
            docroot there). ``host``, ``port`` and ``python`` are always given.
        fixtures_dir: the folder of ``fixtures/`` holding its reference.
    """

    name: str
    role: Role
    title: str
    placeholders: tuple[str, ...]
    ready: str = "tcp"
    description: str = ""
    prepare: Callable[[Any], Mapping[str, str]] | None = None
    checks: dict[str, Check] = field(default_factory=dict)

    @property
    def fixtures_dir(self) -> str:
        return self.name.replace("-", "_")

    def check(
        self,
        group: str,
        name: str,
        *,
        title: str,
        severity: Severity = Severity.MUST,
        references: Iterable[str] = (),
        points: float | None = None,
        fresh_target: bool = False,
        needs: Iterable[str] = (),
        timeout: float = 30.0,
    ) -> Callable[[CheckFunction], CheckFunction]:
        """Register the decorated function as the check ``<suite>/<group>/<name>``."""

        def register(func: CheckFunction) -> CheckFunction:
            self.add(
                Check(
                    id=f"{self.name}/{group}/{name}",
                    title=title,
                    severity=severity,
                    references=tuple(references),
                    role=self.role,
                    points=DEFAULT_POINTS[severity] if points is None else points,
                    func=func,
                    fresh_target=fresh_target,
                    needs=frozenset(needs),
                    timeout=timeout,
                    doc=(func.__doc__ or "").strip(),
                )
            )
            return func

        return register

    def add(self, check: Check) -> None:
        """Add a ready-made check (used by shared groups such as ``common``)."""
        for part in check.id.split("/"):
            if not _ID_PART.match(part):
                raise ValueError(f"check id {check.id!r}: {part!r} must be lowercase letters, digits and '-'")
        if check.id in self.checks:
            raise ValueError(f"check id {check.id!r} registered twice")
        self.checks[check.id] = check


_SUITES: dict[str, Suite] = {}
# Whether every bundled suite was imported: one imported on its own (a test
# importing a suite module) registers itself, and must not hide the others.
_BUNDLED_LOADED = False


def register_suite(suite: Suite) -> Suite:
    """Make ``suite`` known to the plugin; called by each ``suites/<name>/__init__.py``."""
    if suite.name in _SUITES and _SUITES[suite.name] is not suite:
        raise ValueError(f"suite {suite.name!r} registered twice")
    _SUITES[suite.name] = suite
    return suite


def _load_bundled_suites() -> None:
    package = importlib.import_module("pytest_netlab.suites")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.ispkg and not info.name.startswith("_"):
            importlib.import_module(f"pytest_netlab.suites.{info.name}")


def all_suites() -> dict[str, Suite]:
    """Every bundled suite, by name, in a stable order."""
    global _BUNDLED_LOADED
    if not _BUNDLED_LOADED:
        _load_bundled_suites()
        _BUNDLED_LOADED = True
    return dict(sorted(_SUITES.items()))


def get_suite(name: str) -> Suite | None:
    """The suite called ``name``, or None."""
    return all_suites().get(name)


def match_checks(checks: Iterable[Check], include: Iterable[str], exclude: Iterable[str]) -> list[Check]:
    """Filter checks by ``--netlab-check`` and ``--netlab-skip`` globs on their ids.

    A glob without a ``/`` also matches a whole suite or group, so
    ``--netlab-check=zen`` and ``--netlab-check=zen/framing`` do what they say.
    """
    include = list(include)
    exclude = list(exclude)
    return [c for c in checks if (not include or _matches_any(c.id, include)) and not _matches_any(c.id, exclude)]


def _matches_any(check_id: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if fnmatch.fnmatchcase(check_id, pattern) or fnmatch.fnmatchcase(check_id, pattern.rstrip("/") + "/*"):
            return True
    return False
