"""A K2 deployment on the shared stack: its topics, environment, commands, workers, and what its lake says."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

from tests.faults.config import BIN, ROOT
from tests.faults.lake import NAMESPACES, OFFSETS_PREFIX, lake_positions
from tests.faults.processes import Replay, Worker
from tests.faults.source import TP, Position, end_offsets

__all__ = ["Deployment"]


class Deployment:
    """An isolated K2 on the shared stack: its own topics, consumer group, var dir and worker ports.

    The REST catalog is shared, and K2's table names are fixed, so scenarios run one at a
    time and each starts from freshly created tables.
    """

    def __init__(self, stack: Any, tmp: Path, **overrides: str) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.stack = stack
        self.tmp = tmp
        self.cwd = tmp / "cwd"
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.topics = {
            "trades": f"f{self.run_id}.trades",
            "quotes": f"f{self.run_id}.quotes",
            "reference": f"f{self.run_id}.reference",
            "rejects": f"f{self.run_id}.rejects",
        }
        k2 = {
            "K2_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
            "K2_SCHEMA_REGISTRY_URL": stack.schema_registry_url,
            "K2_TRADES_TOPIC": self.topics["trades"],
            "K2_QUOTES_TOPIC": self.topics["quotes"],
            "K2_REFERENCE_TOPIC": self.topics["reference"],
            "K2_REJECTS_TOPIC": self.topics["rejects"],
            "K2_APP_ID": f"k2-faults-{self.run_id}",
            "K2_VAR_DIR": str(tmp / "var"),
            "K2_FLUSH_INTERVAL_S": "1",
            **overrides,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(("K2_", "PYICEBERG_"))}
        env.update(k2)
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        # The code under test is the tree these tests live in, whatever the venv's editable install points at.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        for key, value in stack.pyiceberg_properties().items():
            env[f"PYICEBERG_CATALOG__K2__{key.upper().replace('.', '__').replace('-', '_')}"] = value
        self.env = env
        self.workers: list[Worker] = []
        self.replays: list[Replay] = []
        self._catalog: Catalog | None = None

    # Topics and commands -------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return str(self.stack.kafka_bootstrap)

    @property
    def source_topics(self) -> tuple[str, str, str]:
        return (self.topics["trades"], self.topics["quotes"], self.topics["reference"])

    @staticmethod
    def subject(topic: str) -> str:
        """Registry subject of a topic's values (topic-name strategy, as K2 registers them)."""
        return f"{topic}-value"

    def k2(self, *args: str, check: bool = True, timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(BIN / "k2"), *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"k2 {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def replay(self, *args: str | Path, env: Mapping[str, str] | None = None) -> Replay:
        replay = Replay(
            [str(a) for a in args], dict(env or self.env), self.cwd, self.tmp / f"replay-{len(self.replays)}.log"
        )
        self.replays.append(replay)
        return replay

    def start_worker(self) -> Worker:
        worker = Worker(f"w{len(self.workers)}", self.env, self.cwd, self.tmp / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]

    def partitions(self, topic: str) -> int:
        return sum(1 for (t, _p) in self.end_offsets((topic,)) if t == topic)

    def end_offsets(self, topics: Iterable[str] | None = None) -> dict[TP, int]:
        return end_offsets(self.bootstrap, topics or self.source_topics)

    # The lake -------------------------------------------------------------------------------

    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = load_catalog("k2", **self.stack.pyiceberg_properties())
        return self._catalog

    def tables(self) -> list[str]:
        """Every table in K2's namespaces."""
        out = []
        for namespace in NAMESPACES:
            with contextlib.suppress(NoSuchNamespaceError):
                out += [".".join(ident) for ident in self.catalog().list_tables(namespace)]
        return sorted(out)

    def drop_tables(self) -> None:
        """Purge K2's tables (a previous scenario's rows must not count for this one)."""
        for name in self.tables():
            with contextlib.suppress(NoSuchTableError):
                self.catalog().purge_table(name)

    def recreate_tables(self) -> list[str]:
        """Drop every K2 table and create it again, empty, with the same schema, spec, order and properties."""
        done = []
        catalog = self.catalog()
        for name in self.tables():
            table = catalog.load_table(name)
            schema, spec, order, props = table.schema(), table.spec(), table.sort_order(), dict(table.properties)
            catalog.drop_table(name)
            catalog.create_table(name, schema=schema, partition_spec=spec, sort_order=order, properties=props)
            done.append(name)
        return done

    def marks(self) -> dict[TP, int]:
        """How far the lake says it got: the highest ``k2.offsets.<topic>.<partition>`` of any table's newest
        K2 snapshot (README, Guarantees). A progress signal only; the law is decided from the rows."""
        out: dict[TP, int] = {}
        catalog = self.catalog()
        for name in self.tables():
            table = catalog.load_table(name)
            snapshot = table.current_snapshot()
            while snapshot is not None:
                props = snapshot.summary.additional_properties if snapshot.summary is not None else {}
                found = {k: v for k, v in props.items() if k.startswith(OFFSETS_PREFIX)}
                if found:
                    for key, value in found.items():
                        topic, _, partition = key[len(OFFSETS_PREFIX) :].rpartition(".")
                        if topic in self.source_topics and partition.isdigit():
                            tp = (topic, int(partition))
                            out[tp] = max(out.get(tp, -1), int(value))
                    break
                parent = snapshot.parent_snapshot_id
                snapshot = table.snapshot_by_id(parent) if parent is not None else None
        return out

    def positions(self) -> Counter[Position]:
        """How often each source position appears in the lake's rows (market tables and rejects)."""
        counter, _gaps, _ledger = lake_positions(self)
        return counter

    def delete_topics(self) -> None:
        """Delete this deployment's topics (its own and the worker's internal ones), so that hundreds of
        scenario runs do not pile partitions onto the one test broker."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        mine = [
            t
            for t in admin.list_topics(timeout=15).topics
            if t.startswith((f"f{self.run_id}.", f"{self.env['K2_APP_ID']}-"))
        ]
        if mine:
            for future in admin.delete_topics(mine, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result(60)

    def close(self) -> None:
        for replay in self.replays:
            replay.stop()
        for worker in self.workers:
            worker.terminate(30)
