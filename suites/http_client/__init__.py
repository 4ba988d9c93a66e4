"""http-client: an HTTP/1.1 client judged by RFC 9110 and RFC 9112 (book ch. 9).

The target is a command given ``{url}``; like ``curl -sfL {url}`` it fetches
the URL with GET, follows redirects, writes the final body to stdout and
exits 0 for a final 2xx response, non-zero otherwise. Each check plays a
scripted server (:mod:`._scripted_server`) that records every request the
client sends, reads it with the strict request reader, and answers with
exact bytes: redirects of every status, chunked and close-delimited bodies,
Content-Length with the connection held open, 100 Continue, gzip, silence.
Bodies hold a seeded random token, so a client that prints a canned answer
fails.
"""

from __future__ import annotations

from . import _checks_messages, _checks_redirects  # noqa: F401  (they register the checks)
from ._suite import SUITE

__all__ = ["SUITE"]
