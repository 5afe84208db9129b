"""A stand-in for a Faust table's store and changelog, for unit tests of the buffer and sink.

Only the two things :class:`k2.buffer.store.ChunkStore` touches: ``data`` (the local
store) and ``send_changelog`` (recorded). The real Faust table is exercised end to end
by the integration tests, against a real broker.
"""

from __future__ import annotations

from typing import Any


class RecordingTable:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.changelog: list[tuple[int | None, str, bytes | None]] = []

    def send_changelog(self, partition: int | None, key: str, value: bytes | None, **_: Any) -> None:
        self.changelog.append((partition, key, value))

    def restore_from_changelog(self) -> dict[str, bytes]:
        """What a new owner would rebuild from the changelog (last value per key, tombstones delete)."""
        state: dict[str, bytes] = {}
        for _, key, value in self.changelog:
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        return state
