"""The files the http-server suite serves, and where it puts them.

Every target instance gets the same docroot, built here from constants: the
checks know each file's exact bytes without reading the disk, and a server
that answers from anything but these files is caught. The content is
deterministic (no run seed), so every instance and every run serves the same
bytes; the checks add randomness through their requests instead.

A secret file lies next to the docroot, not in it: a server that lets
``/../`` or ``%2e%2e`` escape its docroot serves it, and the traversal check
looks for its marker in every answer.

This module must not talk to the network.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

__all__ = ["FILES", "SECRET_NAME", "SECRET_MARKER", "SECRET_CONTENT", "prepare_docroot", "served_file"]


def _binary_content() -> bytes:
    """Every byte value, then 96 KiB of a SHA-256 chain: binary, incompressible, larger than one recv()."""
    blocks = [bytes(range(256)) * 4]
    digest = b"netlab http-server binary file"
    while sum(map(len, blocks)) < 97 * 1024:
        digest = hashlib.sha256(digest).digest()
        blocks.append(digest)
    return b"".join(blocks)


# Non-ASCII text on purpose: a server that counts characters instead of
# encoded bytes sends a wrong Content-Length (book ch. 9, "61\u00b0F").
HELLO = (
    "Hello from the netlab docroot.\n"
    "Caf\u00e9 au lait, 61\u00b0F outside, \u00bfqu\u00e9 tal?\n"
    "Beautiful is better than ugly.\n"
).encode("utf-8")

INDEX = (
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>netlab</title></head>\n"
    "<body><h1>netlab docroot</h1><p>Na\u00efve caf\u00e9 \u2014 index page.</p>\n"
    "<a href=\"hello.txt\">hello</a> <a href=\"sub/\">sub</a></body></html>\n"
).encode("utf-8")

SUB_INDEX = (
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>sub</title></head>\n"
    "<body><p>The index page of /sub/, \u00e0 la carte.</p></body></html>\n"
).encode("utf-8")

#: Path in the docroot (``/``-separated) -> exact content.
FILES: Mapping[str, bytes] = {
    "hello.txt": HELLO,
    "index.html": INDEX,
    "data.bin": _binary_content(),
    "name with space.txt": b"A file whose name has spaces: reached as /name%20with%20space.txt\n",
    "sub/index.html": SUB_INDEX,
    "sub/deeper/page.txt": b"Two directories down.\n",
    "plain/note.txt": b"A directory without an index page holds this note.\n",
}

SECRET_NAME = "secret.txt"
SECRET_MARKER = b"NETLAB-SECRET-7c1e9a0d4b"
SECRET_CONTENT = SECRET_MARKER + b": this file lies outside the docroot and must never be served.\n"


def served_file(path: str) -> bytes:
    """The exact content of a docroot file (``"sub/index.html"``)."""
    return FILES[path]


def prepare_docroot(instance: Any) -> dict[str, str]:
    """Fill ``instance.workdir/docroot`` (and the secret beside it); the ``{docroot}`` placeholder.

    Called before every start of an instance, so it rewrites the files each
    time: a target that changed them (DELETE, PUT) starts clean again.
    """
    workdir = Path(instance.workdir)
    docroot = workdir / "docroot"
    for relative, content in FILES.items():
        path = docroot / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (workdir / SECRET_NAME).write_bytes(SECRET_CONTENT)
    return {"docroot": str(docroot)}
