"""The import path ``datakit.datum`` of earlier versions: the Datum wire format now lives in datakit.formats.datum."""

from datakit.formats.datum import (DatumFields, RawLayout, datum_to_array, decode_datum, encode_datum,
                                   encode_datum_bytes, parse_datum_fields, raw_datum_parts)

__all__ = ["DatumFields", "RawLayout", "datum_to_array", "decode_datum", "encode_datum", "encode_datum_bytes",
           "parse_datum_fields", "raw_datum_parts"]
