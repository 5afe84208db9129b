"""Held state writes: one record per key per send, in crash-safe order, and batches durable only once it is sent."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from k2.buffer.changelog import ChangelogWriter
from k2.buffer.pending import PendingWrites
from k2.sequence.book import SequenceBook
from tests.unit.buffer_helpers import RecordingTable
from tests.unit.test_sequence import HOUR, Feed, _messy_feed, messy_batch, restore, run, verdicts


class HeldBack(RecordingTable):
    """A changelog whose deliveries complete only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.deliveries: list[asyncio.Future[None]] = []

    async def send(self, *, key: str, value: bytes | None, partition: int | None, **_: Any) -> asyncio.Future[None]:
        self.changelog.append((partition, key, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.deliveries.append(fut)
        return fut


def held(table: RecordingTable) -> PendingWrites:
    return PendingWrites(ChangelogWriter(table))


async def test_a_key_changed_by_many_batches_is_sent_once_with_its_last_value_blocks_then_heads_then_deletions() -> (
    None
):
    table = RecordingTable()
    pending = held(table)
    pending.add([(0, "w|0|A|X|0|0", b"b1"), (0, "h|0|A|X", b"h1")])
    pending.add([(0, "w|0|A|X|0|1", b"c1"), (0, "h|0|A|X", b"h2"), (1, "h|1|A|Y", b"y1")])
    pending.add([(0, "w|0|A|X|0|2", b"d1"), (0, "h|0|A|X", b"h3"), (0, "w|0|A|X|0|0", None)])
    assert len(pending) == 5
    assert table.changelog == []  # nothing leaves before the send
    await pending.send()
    assert table.changelog == [
        (0, "w|0|A|X|0|1", b"c1"),
        (0, "w|0|A|X|0|2", b"d1"),
        (0, "h|0|A|X", b"h3"),
        (1, "h|1|A|Y", b"y1"),
        (0, "w|0|A|X|0|0", None),
    ]
    assert len(pending) == 0
    await pending.send()
    assert len(table.changelog) == 5  # nothing twice


async def test_a_batch_is_settled_when_the_send_carrying_its_changes_is_acknowledged() -> None:
    table = HeldBack()
    pending = held(table)
    [first] = pending.add([(0, "h|0|A|X", b"h1")])
    assert pending.add([(0, "w|0|A|X|0|0", b"b1")]) == [first]  # batches before one send wait for the same writes
    await asyncio.sleep(0)
    assert not first.done()
    sending = await pending.send()
    [later] = pending.add([(0, "h|0|A|X", b"h2")])  # changed after the send began: waits for the next one
    assert later is not first
    await asyncio.sleep(0)
    assert not first.done()  # sent, not acknowledged
    sending[0].set_result(None)
    await asyncio.sleep(0)
    assert not first.done()  # the block is, the head is not
    sending[1].set_result(None)
    await asyncio.sleep(0)
    assert first.done() and first.exception() is None
    assert not later.done()


async def test_a_batch_waits_for_the_send_that_carries_its_changes_not_a_later_empty_one() -> None:
    """A send may begin between a batch's changes and the end of its write (the write awaits in between)."""
    table = HeldBack()
    pending = held(table)
    [waiting] = pending.add([(0, "h|0|A|X", b"h1")])
    await pending.send()  # carries the change; its delivery is not acknowledged yet
    await pending.send()  # a later send with nothing of partition 0
    await asyncio.sleep(0)
    assert not waiting.done()
    table.deliveries[0].set_result(None)
    await asyncio.sleep(0)
    assert waiting.done() and waiting.exception() is None


async def test_a_failed_write_fails_the_batches_of_its_partition_only() -> None:
    table = HeldBack()
    pending = held(table)
    zero, one = pending.add([(0, "w|0|A|X|0|0", b"b"), (0, "h|0|A|X", b"h"), (1, "h|1|A|Y", b"y")])
    await pending.send()
    block, head, other = table.deliveries
    block.set_exception(RuntimeError("broker refused"))
    head.set_result(None)
    other.set_result(None)
    await asyncio.sleep(0)
    assert isinstance(zero.exception(), RuntimeError)
    assert one.done() and one.exception() is None


async def test_a_send_that_raises_fails_every_batch_waiting_for_it() -> None:
    class Broken(RecordingTable):
        async def send(self, **_: Any) -> asyncio.Future[None]:
            raise RuntimeError("producer stopped")

    pending = held(Broken())
    [waiting] = pending.add([(0, "h|0|A|X", b"h")])
    with pytest.raises(RuntimeError):
        await pending.send()
    assert isinstance(waiting.exception(), RuntimeError)


async def test_sends_from_two_places_at_once_go_out_one_after_the_other() -> None:
    """A flush and a full ledger may both send: a key's newer value must never reach the log before its older one."""

    class Yielding(RecordingTable):
        async def send(self, **kw: Any) -> asyncio.Future[None]:
            await asyncio.sleep(0)  # the producer's send yields to the loop
            return await super().send(**kw)

    table = Yielding()
    pending = held(table)
    pending.add([(0, "w|0|A|X|0|0", b"b1"), (0, "w|0|A|X|0|1", b"c1"), (0, "h|0|A|X", b"h1")])
    first = asyncio.ensure_future(pending.send())
    await asyncio.sleep(0)  # the first send has begun
    pending.add([(0, "w|0|A|X|0|1", b"c2"), (0, "h|0|A|X", b"h2")])
    await asyncio.gather(first, pending.send())
    assert [v for _, _, v in table.changelog] == [b"b1", b"c1", b"h1", b"c2", b"h2"]
    assert table.restore_from_changelog() == {"w|0|A|X|0|0": b"b1", "w|0|A|X|0|1": b"c2", "h|0|A|X": b"h2"}


async def test_revoked_partitions_are_forgotten_unsent() -> None:
    table = RecordingTable()
    pending = held(table)
    gone, kept = pending.add([(0, "h|0|A|X", b"h"), (1, "h|1|A|Y", b"y")])
    pending.forget([0])
    assert gone.cancelled()
    await pending.send()
    await asyncio.sleep(0)
    assert table.changelog == [(1, "h|1|A|Y", b"y")]
    assert kept.done() and not kept.cancelled()


@pytest.mark.parametrize("seed", range(8))
async def test_a_crash_after_any_prefix_of_a_send_for_many_batches_changes_no_decision(seed: int) -> None:
    """None of the batches is durable before its send is: after a crash all of them come again.

    As with state sent per batch, a re-delivered event finds its decision in its key's log, which
    holds ``window`` decisions (``K2_DEDUP_WINDOW``): more decisions than that for one key between
    the committed offset and a crash leave the oldest unresolved (counted, landed as in order).
    """
    rng = random.Random(seed)
    feed = Feed()
    window = 1000
    book = SequenceBook({}, size=window)
    before = run(book, feed.run(list(range(1, 3)))).changes
    batches = []
    for _ in range(6):
        if rng.random() < 0.3:
            batches.append(messy_batch(feed))
        else:  # the feed's offsets keep growing across batches
            batch = [e._replace(offset=feed.offset + i) for i, e in enumerate(_messy_feed(rng, rng.randint(1, 60)))]
            feed.offset += len(batch)
            batches.append(batch)
    table = RecordingTable()
    pending = held(table)
    first = []
    per_batch = 0
    for batch in batches:
        result = run(book, batch)
        first.append(verdicts(result))
        pending.add(result.changes)
        per_batch += len(result.changes)
    await pending.send()
    sent = table.changelog
    assert len(sent) < per_batch  # what holding the writes saves (the batches share keys)
    for k in range(len(sent) + 1):
        again = SequenceBook(restore(sent[:k], restore(before)), size=window)
        assert [verdicts(run(again, batch)) for batch in batches] == first, f"crash after {k} of {len(sent)} writes"
    # ...and what follows is judged against the state as if there had been no crash.
    tail = [feed.ev(1, at=9 * HOUR)]
    assert verdicts(run(SequenceBook(restore(sent, restore(before)), size=window), tail)) == verdicts(run(book, tail))
