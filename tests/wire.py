"""A minimal, independent protobuf wire encoder for tests.

It lets tests check our files against the wire format itself (field numbers,
wire types, packing) rather than against the same generated code that wrote
them.
"""

from __future__ import annotations


def varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_varint_field(number: int, value: int) -> bytes:
    return varint(number << 3 | 0) + varint(value)


def encode_field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload
