"""Chunks: the unit K2 buffers, replicates to the changelog and flushes.

A chunk is a run of consecutive events of one (topic, partition), already decoded,
validated and turned into Arrow columns, serialised as one Arrow IPC stream. Its key
says everything the flusher needs without opening it::

    <kind>:<partition>:<first_offset>:<last_offset>:<rows>

where ``kind`` is ``rows`` (accepted events, bound for the topic's market table),
``rejects`` (refused events, bound for ``market_data.rejects``) or ``gaps`` (sequence
gaps, bound for ``market_data.sequence_gaps``, keyed by the offsets of the events that
revealed them).

Keying by offsets means a chunk rebuilt from the same events after a crash lands on the
same key and overwrites instead of duplicating (the idea of Quix Streams' file sinks),
and overlapping chunks are de-duplicated row by row at flush time.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

__all__ = ["COMPRESS_FROM_ROWS", "GAPS", "KINDS", "REJECTS", "ROWS", "ChunkKey", "from_ipc", "to_ipc"]

ROWS = "rows"
REJECTS = "rejects"
GAPS = "gaps"
KINDS = frozenset({ROWS, REJECTS, GAPS})


@dataclass(frozen=True, order=True)
class ChunkKey:
    """Where a chunk's rows came from: kind, partition, first and last source offsets, row count."""

    kind: str
    partition: int
    first_offset: int
    last_offset: int
    rows: int

    def encode(self) -> str:
        return f"{self.kind}:{self.partition}:{self.first_offset}:{self.last_offset}:{self.rows}"

    @classmethod
    def decode(cls, text: str) -> ChunkKey:
        """Parse :meth:`encode`'s output; ``ValueError`` on anything else."""
        parts = text.split(":")
        if len(parts) != 5 or parts[0] not in KINDS:
            raise ValueError(f"not a chunk key: {text!r}")
        partition, first, last, rows = (int(p) for p in parts[1:])
        if first > last or rows < 0 or partition < 0:
            raise ValueError(f"inconsistent chunk key: {text!r}")
        return cls(parts[0], partition, first, last, rows)


_LZ4 = pa.ipc.IpcWriteOptions(compression="lz4")
_PLAIN = pa.ipc.IpcWriteOptions()

#: Chunks of at least this many rows are LZ4-compressed. LZ4 costs a fixed ~140 us a chunk here
#: (it compresses buffer by buffer, a dozen columns), whatever the rows: 15 times what a chunk of a
#: live batch (tens of rows) costs uncompressed, and under 0.1 us a row from a few thousand rows on,
#: where it halves the bytes or better.
COMPRESS_FROM_ROWS = 1000


def to_ipc(table: pa.Table) -> bytes:
    """Serialise an Arrow table as one IPC stream (schema + record batches), LZ4-compressed from
    :data:`COMPRESS_FROM_ROWS` rows (:func:`from_ipc` reads either).

    Compressed here, column by column, and not again by the Kafka producer (the worker's
    ``producer_compression_type`` is None): compressing twice costs CPU on the hot path for nothing.
    """
    sink = pa.BufferOutputStream()
    options = _LZ4 if table.num_rows >= COMPRESS_FROM_ROWS else _PLAIN
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    """Read back what :func:`to_ipc` wrote."""
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        return reader.read_all()
