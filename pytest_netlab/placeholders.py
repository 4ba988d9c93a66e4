"""Command templates: splitting with shlex and filling in ``{placeholders}``.

A target's command is written once (``{python} srv.py {host} -p {port}``) and
filled in for every launch. The command is split with :mod:`shlex` first and
each word filled in afterwards, so a ``{docroot}`` with a space stays one
argument; nothing is ever given to a shell. ``{{`` and ``}}`` stand for
literal braces.

This module must not launch anything.
"""

from __future__ import annotations

import re
import shlex
from typing import Mapping

from .errors import ConfigError

__all__ = ["KNOWN_PLACEHOLDERS", "placeholders_in", "split_command", "fill_command"]

#: Every placeholder a command may use, with what it stands for (SPEC 2.3).
KNOWN_PLACEHOLDERS: Mapping[str, str] = {
    "host": "the address the target must listen on (server) or the suite's server address (client)",
    "port": "the port the target must listen on (server) or the suite's server port (client)",
    "python": "the Python interpreter running pytest",
    "certfile": "PEM file with the target's certificate chain",
    "keyfile": "PEM file with the target's private key",
    "cafile": "PEM file with the CA certificate to trust",
    "server_hostname": "the host name a TLS client must verify",
    "docroot": "a directory of files the HTTP suite creates",
    "url": "the URL an HTTP client must fetch",
}

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def placeholders_in(command: str) -> list[str]:
    """The placeholder names a command uses, in order of first use."""
    names: list[str] = []
    for match in _FIELD.finditer(command):
        name = match.group(1)
        if name is not None and name not in names:
            names.append(name)
    return names


def check_placeholders(command: str, *, source: str, target: str, key: str = "command") -> None:
    """Raise ConfigError when the command uses a placeholder nobody can fill in."""
    for name in placeholders_in(command):
        if name not in KNOWN_PLACEHOLDERS:
            known = " ".join("{" + k + "}" for k in KNOWN_PLACEHOLDERS)
            raise ConfigError(
                f"unknown placeholder {{{name}}} in {command!r}; known placeholders: {known}",
                source=source,
                target=target,
                key=key,
            )
    if command.count("{") - 2 * command.count("{{") != command.count("}") - 2 * command.count("}}"):
        raise ConfigError(f"unbalanced braces in {command!r}; write {{{{ and }}}} for literal braces", source=source, target=target, key=key)


def split_command(command: str, *, source: str, target: str, key: str = "command") -> list[str]:
    """Split a command line the way a POSIX shell would, without running one."""
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise ConfigError(f"cannot split {command!r}: {error}", source=source, target=target, key=key) from None
    if not words:
        raise ConfigError("the command is empty", source=source, target=target, key=key)
    return words


def fill_command(words: list[str], values: Mapping[str, str]) -> list[str]:
    """Fill every placeholder of every word; a missing value is a KeyError naming it."""

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "{{":
            return "{"
        if text == "}}":
            return "}"
        return values[match.group(1)]

    return [_FIELD.sub(replace, word) for word in words]
