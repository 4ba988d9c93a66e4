"""pytest-netlab: conformance suites for network protocol implementations.

The public API: what suites, checks and users' own tests build on. Everything
else in this package is private machinery.
"""

from __future__ import annotations

from .context import CheckContext
from .declarations import TargetSpec
from .errors import ConfigError, HarnessError, NetlabError, NotApplicable, ProtocolViolation, TargetCrashed, TargetError, TargetStartError
from .rawclient import ClosedEarly, ConnectFailed, ReceiveTimeout, ScriptedClient
from .registry import Check, Role, Severity, Suite, all_suites, register_suite
from .transcript import Event, Transcript

__version__ = "0.1.0"

__all__ = [
    "Check",
    "CheckContext",
    "ClosedEarly",
    "ConfigError",
    "ConnectFailed",
    "Event",
    "HarnessError",
    "NetlabError",
    "NotApplicable",
    "ProtocolViolation",
    "ReceiveTimeout",
    "Role",
    "ScriptedClient",
    "Severity",
    "Suite",
    "TargetCrashed",
    "TargetError",
    "TargetSpec",
    "TargetStartError",
    "Transcript",
    "all_suites",
    "register_suite",
]
