"""Sort a batch of raw records into accepted rows and rejects, errors as data.

This is the bytewax shape: one pass returns ``(oks, errs)``; a bad record is a value
that flows to the rejects output with its reason, never an exception that stops the
partition or takes its neighbours down with it. Everything here is pure: the writer
schemas are resolved beforehand (the only I/O, done once per new schema id), so the
per-record work is a header split, one fastavro read and a few comparisons.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from k2.avro.codec import HEADER_SIZE, MAX_SCHEMA_ID, decode, frame_schema_id
from k2.errors import DecodeError, InvalidValue, NotConfluentFramed, UnknownSchemaId, one_line
from k2.ingest.frames import RawRecord
from k2.lake.records import BufferedEvent, RejectRecord

__all__ = [
    "BatchOutcome",
    "Resolution",
    "ResolvedSchema",
    "Validator",
    "classify",
]


class ResolvedSchema(Protocol):
    """What classification needs of a writer schema fetched from the registry."""

    @property
    def parsed(self) -> Any:
        """The schema as :func:`k2.avro.codec.parse_schema` parsed it (for :func:`classify`)."""
        ...

    @property
    def schema_str(self) -> str:
        """The schema's JSON text (for the batch path, :mod:`k2.ingest.fast`)."""
        ...


#: How a schema id of the batch was resolved: a schema registered under the topic's
#: subject, or the permanent error to reject its records with (unknown id, wrong subject).
Resolution = ResolvedSchema | DecodeError

#: A domain validator: returns the broken rule as an :class:`InvalidValue`, or ``None``;
#: the second item flags a valid-but-notable state (a crossed quote) to be counted.
Validator = Callable[[dict[str, Any], int], tuple[InvalidValue | None, bool]]


@dataclass
class BatchOutcome:
    """What one batch became: rows to buffer, rejects to route, and what was seen on the way."""

    accepted: list[BufferedEvent] = field(default_factory=list)
    rejected: list[RejectRecord] = field(default_factory=list)
    #: valid records the validator flagged (crossed quotes)
    flagged: int = 0
    #: writer schema ids of the accepted records (a new one may mean new columns)
    accepted_schema_ids: set[int] = field(default_factory=set)


_MAX_VALUE_REPR = 200


def _detail(problem: DecodeError) -> str:
    """The reject's detail: one bounded printable line (:func:`~k2.errors.one_line`), the value's repr cut first."""
    if isinstance(problem, InvalidValue):
        value = repr(problem.value)
        if len(value) > _MAX_VALUE_REPR:
            value = f"{value[:_MAX_VALUE_REPR]}...({len(value)} chars)"
        return one_line(f"{problem.field}={value}: {problem.detail}")
    return one_line(str(problem)) or type(problem).__name__


def _unreadable(exc: Exception) -> InvalidValue:
    """The reject for a record the validator could not even read (a writer schema off the contract's shape)."""
    if isinstance(exc, KeyError):
        return InvalidValue(str(exc.args[0]) if exc.args else "record", None, "required by the domain rules, missing")
    return InvalidValue("record", type(exc).__name__, f"the domain rules cannot read it: {exc}")


def classify(
    topic: str,
    records: Iterable[RawRecord],
    schemas: Mapping[int, Resolution],
    validate: Validator,
    now_ms: int,
    worker_id: str | None = None,
) -> BatchOutcome:
    """Decode and check each record against its writer schema and the domain rules.

    ``schemas`` maps every schema id of the batch (see :meth:`k2.ingest.frames.Frames.schema_ids`) to its
    resolution, made beforehand against the topic's subject. Transient registry failures
    must be retried by the caller *before* this runs: an id absent from ``schemas`` is a
    bug (``KeyError``), never a reason to reject good data.
    """
    out = BatchOutcome()
    accepted = out.accepted.append
    rejected = out.rejected.append
    seen_ids = out.accepted_schema_ids.add
    # BufferedEvent(...) runs namedtuple's Python-level __new__; tuple.__new__ (what its _make
    # calls) builds the same tuple in C, a third of the cost of an accepted record's bookkeeping.
    event = tuple.__new__
    for rec in records:
        schema_id: int | None = None
        problem: DecodeError | None = None
        flagged = False
        record: Any = None
        value = rec.value
        try:
            if value is None:
                raise NotConfluentFramed("the value is null (a tombstone), not a Confluent-framed Avro record")
            header_id = frame_schema_id(value)
            if header_id > MAX_SCHEMA_ID:
                # Not a registry id; the reject's schema_id column (int32) stays null, the id goes in the detail.
                raise UnknownSchemaId(
                    f"schema id {header_id} ({header_id:#010x}) has the high bit set: registry ids are positive"
                    " 32-bit ints, so the registry was not asked"
                )
            schema_id = header_id
            writer = schemas[schema_id]
            if isinstance(writer, DecodeError):
                problem = writer  # resolved once for the batch; not re-raised, so no traceback piles up
            else:
                record = decode(value, writer.parsed, offset=HEADER_SIZE)  # a dict: decode refuses all else
                try:
                    problem, flagged = validate(record, now_ms)
                except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
                    # A registered writer schema (BACKWARD-compatible, so it may drop a field or
                    # turn bytes into a string) can give a record the rules cannot read.
                    problem = _unreadable(exc)
        except DecodeError as err:
            problem = err
        if problem is not None:
            rejected(
                RejectRecord(
                    topic,
                    rec.partition,
                    rec.offset,
                    problem.reason,
                    _detail(problem),
                    now_ms,
                    schema_id,
                    rec.key,
                    value,
                    worker_id,
                    rec.headers,
                )
            )
            continue
        if flagged:
            out.flagged += 1
        if schema_id is not None:
            seen_ids(schema_id)
        accepted(event(BufferedEvent, (topic, rec.partition, rec.offset, record)))
    return out
