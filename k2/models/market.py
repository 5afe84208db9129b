"""Typed views of the three Avro contracts and of a rejected event.

The hot path works on fastavro's plain dicts (and then Arrow columns) for speed; these
records are the typed shape where a single event is handled as an object: the
reference-data table and a reject's headers.
"""

from __future__ import annotations

from typing import Any

import faust


class ReferenceData(faust.Record, serializer="json"):
    company_id: int
    symbol: str
    company_name: str
    isin: str
    start_date: str
    end_date: str | None = None


class Reject(faust.Record, serializer="json"):
    """Why an event was refused, and where it came from; its bytes travel untouched."""

    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    schema_id: int | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers for the rejects topic (the value and key stay the original bytes)."""
        out = [
            ("k2.reason", self.reason.encode()),
            ("k2.detail", self.detail.encode()),
            ("k2.source.topic", self.source_topic.encode()),
            ("k2.source.partition", str(self.source_partition).encode()),
            ("k2.source.offset", str(self.source_offset).encode()),
        ]
        if self.schema_id is not None:
            out.append(("k2.schema.id", str(self.schema_id).encode()))
        return out

    @classmethod
    def from_headers(cls, headers: Any) -> Reject:
        """Read back what :meth:`headers` wrote (headers as pairs or a mapping)."""
        items = headers.items() if hasattr(headers, "items") else headers
        h = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in items}
        schema_id = h.get("k2.schema.id")
        return cls(
            reason=h["k2.reason"],
            detail=h.get("k2.detail", ""),
            source_topic=h["k2.source.topic"],
            source_partition=int(h["k2.source.partition"]),
            source_offset=int(h["k2.source.offset"]),
            schema_id=int(schema_id) if schema_id is not None else None,
        )
