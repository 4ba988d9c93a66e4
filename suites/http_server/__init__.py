"""http-server: a static file server judged by RFC 9110 and RFC 9112 (book ch. 9-10).

The target serves ``{docroot}`` over HTTP/1.1 on ``{host}:{port}``. The suite
fills the docroot (text, HTML, binary with every byte value, nested
directories with and without index.html, a name with a space) and puts a
secret file next to it, then speaks to the server in exact bytes over raw
sockets, because a high-level client would hide the bugs. Every response is
read by the strict reader of :mod:`pytest_netlab.http_wire`, so a framing
error anywhere (a body on HEAD, a wrong Content-Length, a bare LF) fails the
check that met it with the rule and the bytes.

The checks live in :mod:`._checks_resources` (get, methods, conditional,
security), :mod:`._checks_protocol` (requests, connections) and
:mod:`._common` (the ``common`` group every TCP server suite has).
"""

from __future__ import annotations

from . import _checks_protocol, _checks_resources, _common  # noqa: F401  (they register the checks)
from ._suite import SUITE

__all__ = ["SUITE"]
