"""The protobuf wire format's one primitive we write by hand: the base-128 varint.

Used where records are serialized without the protobuf library for speed
(datakit.formats.datum's Datum framing, datakit.formats.blobproto's packed floats);
both are checked byte for byte against caffe_pb2 in the tests.
"""

from __future__ import annotations

__all__ = ["varint"]


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; a negative int32/int64 takes 10 bytes (two's complement), as protobuf writes it."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)
