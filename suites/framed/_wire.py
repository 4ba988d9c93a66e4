"""Length-prefixed messages (FOPNP ch. 5, blocks.py) as pure functions: framing, parsing, diagnoses.

A message is a 4-byte unsigned big-endian length, ``struct.pack('!I', n)``,
followed by exactly ``n`` bytes of payload. "Each message is prefixed with a
4-byte length contained in a struct" (B:3018); a zero-length message ends the
series (B:3018, B:3083).

This module owns the wire format and the words that explain a wrong length.
It must not touch sockets or clocks.
"""

from __future__ import annotations

import struct
from typing import Sequence

from pytest_netlab.transcript import format_bytes

__all__ = [
    "HEADER",
    "END",
    "frame",
    "parse_frames",
    "little_endian_length",
    "explain_wrong_length",
    "split_at",
    "describe_pieces",
    "explain_split",
]

#: The 4-byte length prefix: unsigned, network (big-endian) order.
HEADER = struct.Struct("!I")
#: The zero-length message that ends a conversation.
END = HEADER.pack(0)


def frame(payload: bytes) -> bytes:
    """One message on the wire: ``struct.pack('!I', len(payload)) + payload``."""
    return HEADER.pack(len(payload)) + payload


def parse_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete messages at the start of ``data``, and the bytes left over.

    >>> parse_frames(b"\\x00\\x00\\x00\\x02hi\\x00\\x00")
    ([b'hi'], b'\\x00\\x00')
    """
    messages = []
    offset = 0
    while len(data) - offset >= HEADER.size:
        (length,) = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if end > len(data):
            break
        messages.append(data[offset + HEADER.size : end])
        offset = end
    return messages, data[offset:]


def little_endian_length(header: bytes) -> int:
    """What a reader that takes the 4 bytes as little-endian (``'<I'``, or native ``'I'`` on x86) sees."""
    return int(struct.unpack("<I", header)[0])


def explain_wrong_length(header: bytes, payload_length: int) -> str:
    """The likely mistake behind a reply whose length prefix is not ``payload_length``."""
    (announced,) = HEADER.unpack(header)
    if little_endian_length(header) == payload_length:
        return (
            f"the reply's length {header.hex(' ')} looks like a little-endian length: "
            "write it with struct.pack('!I', n) ('!' is network order, big-endian; 'I' alone is native, little-endian on x86)"
        )
    if announced == payload_length + HEADER.size:
        return "the length counts the payload only, not the 4 bytes of the length itself"
    return "the length prefix is the number of payload bytes that follow it: struct.pack('!I', len(payload))"


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets; offsets outside ``1..len-1`` and repeats are ignored."""
    inner = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *inner, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def describe_pieces(pieces: Sequence[bytes], limit: int = 6) -> str:
    """How a stream went on the wire: ``b'\\x00\\x00' | b'\\x00\\x02hi' (2 segments)``, long lists cut."""
    shown = [format_bytes(p, limit=32) for p in pieces[:limit]]
    if len(pieces) > limit:
        shown.append(f"... {len(pieces) - limit} more")
    return " | ".join(shown) + f" ({len(pieces)} segment{'s' if len(pieces) != 1 else ''})"


def explain_split(payloads: Sequence[bytes], cuts: Sequence[int]) -> str:
    """Which framing mistake a split of these messages exposes, in the words a student would search for.

    >>> explain_split([b"ab", b"c"], [7])   # the first message, then 1 byte of the next length
    'after a message, the bytes that follow it in the same recv() (here 1 byte of the next length) start the next message: keep them in your buffer'
    """
    starts, offset = [], 0
    for payload in payloads:
        starts.append(offset)
        offset += HEADER.size + len(payload)
    bounds = sorted({c for c in cuts if 0 < c < offset})
    for cut in bounds:
        for index, start in enumerate(starts):
            if start < cut < start + HEADER.size:
                earlier = [c for c in bounds if c < cut]
                if index and (not earlier or earlier[-1] < start):
                    held = cut - start
                    return (
                        f"after a message, the bytes that follow it in the same recv() (here {held} byte{'s' if held > 1 else ''} "
                        "of the next length) start the next message: keep them in your buffer"
                    )
                return "a 4-byte length arrived in pieces: read it with a loop until you have all 4 bytes, then unpack it with '!I'"
    if bounds:
        return "a payload arrived in pieces: loop on recv() until you have all n bytes the length announced"
    if len(payloads) > 1:
        return "several messages arrived in one recv(): after each message, parse the bytes left over as the next one"
    return "read the 4-byte length, then exactly n bytes of payload, each with a recv() loop; then echo with sendall()"
