"""Frames fastavro's writer refuses to make: Avro bodies with out-of-contract values on the wire.

A producer that does not use K2's contracts (or a corrupted frame) can put anything the
wire format can express into a field: a 64-bit varint where the schema says ``int``, a
decimal of any magnitude (its bytes are just bytes), invalid UTF-8 where it says
``string``. :func:`wide_schema` is a contract with each such type widened to the type that
is encoded the same way (``int`` -> ``long``, ``string`` and decimal ``bytes`` -> plain
``bytes``), so fastavro itself writes those frames.
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cache
from typing import Any

from k2.avro.codec import encode, parse_schema
from k2.avro.schemas import CONTRACTS


def _widen(node: Any) -> Any:
    if node == "int":
        return "long"
    if node == "string":
        return "bytes"
    if isinstance(node, list):
        return [_widen(n) for n in node]
    if isinstance(node, dict):
        if node.get("logicalType") == "decimal":
            return "bytes"
        out = dict(node)
        if "fields" in out:
            out["fields"] = [{**f, "type": _widen(f["type"]), "default": None} for f in out["fields"]]
            for f in out["fields"]:
                if f["default"] is None and not (isinstance(f["type"], list) and f["type"][0] == "null"):
                    del f["default"]
        elif isinstance(out.get("type"), str) and out["type"] in ("int", "string"):
            return _widen(out["type"])
        return out
    return node


@cache
def wide_schema(contract: str) -> Any:
    """The contract ``contract`` with int, string and decimal widened to their wire-equal types."""
    return parse_schema(_widen(json.loads(CONTRACTS[contract].schema_str)))


def unscaled(value: int) -> bytes:
    """A decimal's wire bytes: the unscaled integer, two's complement, big-endian, minimal."""
    return value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)


def wire_value(value: Any) -> Any:
    """A contract value as the wide schema takes it (str -> UTF-8 bytes, Decimal at scale 6 -> unscaled bytes)."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, Decimal):
        return unscaled(int(value.scaleb(6)))
    return value


def encode_wide(schema_id: int, contract: str, record: dict[str, Any]) -> bytes:
    """``record`` (contract values, or wire values where the contract would refuse them) framed as ``contract``."""
    return encode(schema_id, wide_schema(contract), {k: wire_value(v) for k, v in record.items()})
