"""The exception families of pytest-netlab, and who each one blames.

After h11's split between "you broke the rules" and "the peer did", every
error here says whose fault it is:

- :class:`ProtocolViolation`: the implementation under test broke a rule.
  It carries structured fields (expected, got, transcript excerpt) that the
  runner renders into a teaching message.
- :class:`TargetError`: the target could not be run at all (never started,
  crashed, hung). Also the target's fault, reported with its exit status and
  output tail.
- :class:`HarnessError`: our side failed (a port we could not bind, a missing
  tool). Reported as an error that never blames the target.
- :class:`NotApplicable`: the check does not apply here (IPv6 missing, a
  lifecycle check against an already-running server). Reported as a skip.
- :class:`ConfigError`: a usage error in options or ``netlab.toml``; it names
  the file, the target and the key, and becomes pytest's exit status 4.

This module must not import pytest: checks raise these from plain code.
"""

from __future__ import annotations

__all__ = [
    "NetlabError",
    "ProtocolViolation",
    "TargetError",
    "TargetStartError",
    "TargetCrashed",
    "HarnessError",
    "NotApplicable",
    "ConfigError",
]


class NetlabError(Exception):
    """Base class of every error pytest-netlab raises on purpose."""


class ProtocolViolation(NetlabError):
    """The implementation under test broke a rule of its protocol.

    Args:
        summary: one line saying what went wrong, in the target's terms.
        expected: what a conforming implementation does.
        got: what this one did.
        excerpt: a transcript excerpt (bytes each way, with times); the
            runner fills it from the check's transcript when left empty.
        hint: a likely cause, in the words a student would search for.
    """

    def __init__(self, summary: str, *, expected: str = "", got: str = "", excerpt: str = "", hint: str = "") -> None:
        super().__init__(summary)
        self.summary = summary
        self.expected = expected
        self.got = got
        self.excerpt = excerpt
        self.hint = hint


class TargetError(NetlabError):
    """The target itself failed to run: it is blamed, with its output as evidence."""

    def __init__(self, summary: str, *, details: str = "") -> None:
        super().__init__(summary)
        self.summary = summary
        self.details = details

    def __str__(self) -> str:
        return f"{self.summary}\n{self.details}" if self.details else self.summary


class TargetStartError(TargetError):
    """The target exited, never became ready, or could not be executed."""


class TargetCrashed(TargetError):
    """The target died while a check was talking to it."""


class HarnessError(NetlabError):
    """pytest-netlab itself (or the machine it runs on) failed; not the target's fault."""


class NotApplicable(NetlabError):
    """The check does not apply to this target or machine; the message is the reason."""


class ConfigError(NetlabError):
    """A usage error in an option or a declaration.

    Args:
        message: what is wrong and what is valid instead.
        source: where the bad value came from (``netlab.toml``,
            ``--netlab-target``, ``pytest.ini``...).
        target: the target the value belongs to, if any.
        key: the key or option holding the bad value, if any.
    """

    def __init__(self, message: str, *, source: str = "", target: str = "", key: str = "") -> None:
        self.message = message
        self.source = source
        self.target = target
        self.key = key
        super().__init__(self.render())

    def render(self) -> str:
        """``netlab.toml: [targets.web] key 'comand': unknown key; valid keys: ...``."""
        where = []
        if self.source:
            where.append(self.source)
        if self.target:
            where.append(f"[targets.{self.target}]")
        if self.key:
            where.append(f"key {self.key!r}")
        prefix = " ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message
