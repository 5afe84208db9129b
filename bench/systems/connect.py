"""Apache Iceberg's own Kafka Connect sink, as a system the benchmark can start, measure and kill.

The other pipeline the benchmark compares K2 with is the one Iceberg publishes itself:
``org.apache.iceberg.connect.IcebergSinkConnector`` run by Kafka Connect in standalone mode,
on the same broker, reading the same topics and writing the same table schemas. Nothing of
either project is vendored here: :func:`assemble` writes small POMs and lets Maven copy the
published jars from Maven Central into ``var/bench/connect/`` (once; keyed by the POMs'
content), and :class:`ConnectSystem` writes the worker and connector configuration and runs
the JVM.

Values stay Avro end to end. K2's events are Confluent-framed Avro (magic 0, a 4-byte schema
id, the body) with schemas in Apicurio Registry; Confluent's AvroConverter is not on Maven
Central, but Apicurio's own converter is, and with its 4-byte id handler and content ids it
reads the same frames, fetching the writer schema by id from the registry's native v2 API
(Apicurio 3 still serves it; its Confluent API's ids are content ids unless legacy-id mode is
on, and the local stack turns that off). Converter 3.0.9 would match the registry's version,
but its parent POM is not on Maven Central, so 2.6.13.Final it is.

The sink writes into a JdbcCatalog over a SQLite file, the same layout pyiceberg's
``SqlCatalog`` uses, so the benchmark reads what landed with pyiceberg
(:meth:`ConnectSystem.catalog`). The tables are created beforehand with K2's schemas and
day partitioning (:mod:`k2.lake.schemas`), so both systems write the same columns; Iceberg's
``KafkaMetadataTransform`` (named ``kafka``) gives each record ``kafka_partition`` and
``kafka_offset``, which fill K2's lineage columns and make a kill test checkable row by row,
and ``kafka_topic``, which routes each record to its table (its columns the tables lack,
``kafka_topic`` and ``kafka_timestamp``, are dropped by the sink).

Exactly once is the sink's own: each task sends its data files and its source offsets to
the control topic in one Kafka transaction, the coordinator commits the files to Iceberg and
records the control topic's offsets in the snapshot summary, so a restarted JVM neither
loses nor repeats a commit (``bench/compare.py``'s kill -9 run checks this row by row).

Usage from a driver::

    system = ConnectSystem(broker="127.0.0.1:39092", registry_url="http://127.0.0.1:38081/apis/ccompat/v7",
                           topics={"t.trades": TRADES, "t.quotes": QUOTES}, workdir=Path("/tmp/run1"),
                           commit_interval_s=5)
    system.prepare()            # jars (cached), control topic, tables, configuration
    system.start()              # the JVM, in its own session; system.pids() is [its pid]
    system.wait_running()       # the connector and every task RUNNING (REST API)
    system.check()              # in a wait loop: raises if the JVM died or a task FAILED
    system.landed_rows()        # {"market_data.trades": n, ...} from the snapshot summaries
    system.positions(TRADES)    # Arrow table of (kafka_partition, kafka_offset), one per row
    system.kill()               # SIGKILL; start() again resumes from what was committed
    system.stop()
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC

from k2.admin.topics import TopicSpec, admin_client, ensure_topics
from k2.lake.schemas import QUOTES, TABLES, TRADES
from k2.settings import Settings

__all__ = [
    "CATALOG_NAME",
    "CONNECT_VERSION",
    "ICEBERG_VERSION",
    "Artifacts",
    "ConnectError",
    "ConnectSystem",
    "assemble",
    "k2_topics",
    "proc_cpu_seconds",
    "proc_peak_rss_mib",
]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = ROOT / "var" / "bench" / "connect"

# connect-runtime 4.4.0 breaks the sink 1.12.0 (NoClassDefFoundError AppInfoParser); 4.3.1 runs it.
CONNECT_VERSION = "4.3.1"
ICEBERG_VERSION = "1.12.0"
# The sink's Parquet writer and HadoopFileIO need Hadoop; the shaded client is self-contained.
HADOOP_VERSION = "3.4.2"
SQLITE_JDBC_VERSION = "3.51.1.0"
# 3.0.9 matches the registry, but its parent POM (io.apicurio:apicurio-registry:3.0.9) is not
# on Maven Central, so Maven cannot resolve it; 2.6.13.Final resolves and reads the same frames.
APICURIO_CONVERTER_VERSION = "2.6.13.Final"
# Connect's runtime declares slf4j-api 1.7 and no backend; the SLF4J 1.x binding for log4j2.
LOG4J_VERSION = "2.24.3"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

CATALOG_NAME = "connect"
"""The catalog name the sink writes under; pyiceberg's SqlCatalog must use the same one."""

CONNECTOR_CLASS = "org.apache.iceberg.connect.IcebergSinkConnector"
METADATA_TRANSFORM = "org.apache.iceberg.connect.transforms.KafkaMetadataTransform"
METADATA_PREFIX = "kafka"  # the transform then adds kafka_topic, kafka_partition, kafka_offset, kafka_timestamp
AVRO_CONVERTER = "io.apicurio.registry.utils.converter.AvroConverter"
FOUR_BYTE_IDS = "io.apicurio.registry.serde.Legacy4ByteIdHandler"

MAVEN_TIMEOUT_S = 900
STOP_TIMEOUT_S = 30.0
RUNNING_TIMEOUT_S = 180.0

# What a table created here has: Parquet zstd like K2's; not K2's commit.retry.num-retries=0,
# which is K2's own exactly-once bookkeeping and would only make the sink's commits fail.
TABLE_PROPERTIES: Mapping[str, str] = {
    "write.format.default": "parquet",
    "write.parquet.compression-codec": "zstd",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "100",
}


class ConnectError(RuntimeError):
    """Connect could not be assembled, configured, started or read; the message says why and where to look."""


# --------------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class Artifacts:
    """Where an assembled Connect lives: the worker's classpath and its plugin path."""

    root: Path

    @property
    def runtime(self) -> Path:
        return self.root / "runtime"

    @property
    def plugins(self) -> Path:
        return self.root / "plugins"


def _dependency(coordinate: str) -> str:
    group, artifact, version = coordinate.split(":")
    return (
        f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
        f"<version>{version}</version></dependency>"
    )


def _pom(name: str, coordinates: Sequence[str]) -> str:
    deps = "\n".join(_dependency(c) for c in coordinates)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<!-- Written by bench/systems/connect.py: only what Maven copies into one folder. -->\n"
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        f"  <groupId>k2.bench</groupId><artifactId>connect-{name}</artifactId><version>0</version>\n"
        "  <packaging>pom</packaging>\n"
        f"  <dependencies>\n{deps}\n  </dependencies>\n"
        "</project>\n"
    )


# folder under the assembly -> (Maven coordinates, group ids left out of the folder).
# Plugin folders leave out Kafka and SLF4J: Connect loads both from its own classpath for
# every plugin anyway, and a second copy would only hide which one runs.
_FOLDERS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "runtime": (
        (
            f"org.apache.kafka:connect-runtime:{CONNECT_VERSION}",
            f"org.apache.kafka:connect-json:{CONNECT_VERSION}",
            f"org.apache.logging.log4j:log4j-core:{LOG4J_VERSION}",
            f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}",
        ),
        (),
    ),
    "plugins/iceberg": (
        (
            f"org.apache.iceberg:iceberg-kafka-connect:{ICEBERG_VERSION}",
            f"org.apache.iceberg:iceberg-kafka-connect-transforms:{ICEBERG_VERSION}",
            f"org.apache.iceberg:iceberg-parquet:{ICEBERG_VERSION}",
            f"org.apache.hadoop:hadoop-client-api:{HADOOP_VERSION}",
            f"org.apache.hadoop:hadoop-client-runtime:{HADOOP_VERSION}",
            f"org.xerial:sqlite-jdbc:{SQLITE_JDBC_VERSION}",
        ),
        ("org.apache.kafka", "org.slf4j"),
    ),
    "plugins/apicurio": (
        (f"io.apicurio:apicurio-registry-utils-converter:{APICURIO_CONVERTER_VERSION}",),
        ("org.apache.kafka", "org.slf4j"),
    ),
}


# Apicurio's converter jar has no ServiceLoader manifest, so Connect would have to scan
# every class of every plugin jar to find it (30 s and more here, before anything runs). A
# jar holding just that manifest, beside it in its plugin folder, is what Kafka's own
# `connect-plugin-path.sh sync-manifests` would add, and lets the worker use
# plugin.discovery=service_load.
_MANIFESTS: Mapping[str, tuple[str, ...]] = {
    "org.apache.kafka.connect.storage.Converter": (AVRO_CONVERTER,),
}


def _write_manifests(folder: Path) -> None:
    with zipfile.ZipFile(folder / "k2-bench-service-manifests.jar", "w") as jar:
        for service, classes in _MANIFESTS.items():
            jar.writestr(f"META-INF/services/{service}", "".join(f"{c}\n" for c in classes))


def _assembly_key() -> str:
    text = json.dumps([{k: list(map(list, v)) for k, v in _FOLDERS.items()}, _MANIFESTS], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def assemble(cache: Path = DEFAULT_CACHE, log: Path | None = None) -> Artifacts:
    """The Connect runtime and the plugin folders, fetched by Maven on first use and cached.

    The folder is named by a hash of the artifact list, so changing a version assembles anew
    beside the old one, and it appears only once complete (built under a temporary name,
    then renamed), so an interrupted fetch is never mistaken for a finished one.
    """
    target = cache / f"lib-{_assembly_key()}"
    if (target / ".complete").is_file():
        return Artifacts(target)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConnectError("`mvn` was not found; it fetches Connect and the sink: apt-get install maven")
    cache.mkdir(parents=True, exist_ok=True)
    log = log or cache / "maven.log"
    tmp = cache / f".lib.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for folder, (coordinates, excluded) in _FOLDERS.items():
            pom = tmp / "poms" / f"{folder.replace('/', '-')}.xml"
            pom.parent.mkdir(parents=True, exist_ok=True)
            pom.write_text(_pom(folder.replace("/", "-"), coordinates))
            args = [
                mvn,
                "-B",
                "-q",
                "-Dmaven.artifact.threads=8",
                "-f",
                str(pom),
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                f"-DoutputDirectory={tmp / folder}",
            ]
            if excluded:
                args.append(f"-DexcludeGroupIds={','.join(excluded)}")
            with log.open("ab") as out:
                out.write(f"\n=== {time.strftime('%F %T')} {' '.join(args)}\n".encode())
                out.flush()
                try:
                    proc = subprocess.run(
                        args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=MAVEN_TIMEOUT_S
                    )
                except subprocess.TimeoutExpired:
                    raise ConnectError(
                        f"Maven did not copy {folder} within {MAVEN_TIMEOUT_S}s (Maven Central reachable?); see {log}"
                    ) from None
            if proc.returncode != 0:
                raise ConnectError(f"Maven failed to copy {folder} (exit {proc.returncode}); see {log}")
        _write_manifests(tmp / "plugins" / "apicurio")
        (tmp / ".complete").write_text("\n".join(c for cs, _ in _FOLDERS.values() for c in cs) + "\n")
        if not (target / ".complete").is_file():  # another process may have finished first
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Artifacts(target)


# --------------------------------------------------------------------------- helpers


def k2_topics(trades_topic: str, quotes_topic: str) -> dict[str, str]:
    """The ``topics`` argument for K2's two market topics: each lands in the K2 table of its kind."""
    return {trades_topic: TRADES, quotes_topic: QUOTES}


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (all its threads: JIT and GC included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mib(pid: int) -> float:
    """Peak resident set (VmHWM) of a live process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ConnectError(f"/proc/{pid}/status has no VmHWM line")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _properties(values: Mapping[str, str]) -> str:
    """A Java .properties text; values escaped so that a regex's backslashes reach Java as written."""

    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace("\n", "\\n")

    def key(text: str) -> str:
        return esc(text).replace("=", "\\=").replace(":", "\\:")

    return "".join(f"{key(k)}={esc(v)}\n" for k, v in values.items())


def _registry_v2(registry_url: str) -> str:
    """Apicurio's native v2 API from the registry's Confluent-compatible URL (or any URL on that host)."""
    parts = urlsplit(registry_url)
    return urlunsplit((parts.scheme, parts.netloc, "/apis/registry/v2", "", ""))


def _java_regex_literal(text: str) -> str:
    return "\\Q" + text.replace("\\E", "\\E\\\\E\\Q") + "\\E"


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

LOG4J2 = """\
# Written by bench/systems/connect.py.
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
# Every Kafka client prints its whole configuration when built; the sink builds several.
logger.config.name = org.apache.kafka.common.config
logger.config.level = WARN
logger.hadoop.name = org.apache.hadoop
logger.hadoop.level = WARN
"""


# --------------------------------------------------------------------------- the system


class ConnectSystem:
    """One Connect standalone worker running Iceberg's sink from ``topics`` into a SQLite-backed catalog.

    Args:
        broker: Kafka bootstrap servers, host:port.
        registry_url: the registry K2 registered its contracts in (its Confluent API URL is fine:
            the converter uses the native API on the same host).
        topics: source topic -> K2 table (``market_data.trades`` or ``market_data.quotes``) whose
            schema and name the Connect table gets, in its own catalog.
        workdir: where this run's configuration, catalog, warehouse, offsets file and log go.
        commit_interval_s: the sink's ``iceberg.control.commit.interval-ms`` (its default is 300 s).
        group_id: the sink's consumer group (default ``connect-<name>``, Connect's own naming).
        name: the connector name.
        tasks: ``tasks.max``; one task reads every partition, like one K2 worker.
        heap_mb: the JVM's maximum heap. The sink keeps a Parquet writer open per table
            partition until the next commit; on K2's looped sample (a day partition per
            thousand events) 1024 MB ran out of heap within a minute, 2048 MB did not.
        session_timeout_s: the consumer groups' session timeout, the sink's and its control
            topic's: how long a killed JVM's consumers keep their partitions before a restarted
            one gets them (Kafka's default is 45 s; K2's workers use K2_SESSION_TIMEOUT_S, 15).
        partitioned: create the tables with K2's day partitions (False: unpartitioned, to
            see what the partitioning costs).
        cache: where :func:`assemble` keeps the jars.
        worker_overrides, connector_overrides: extra properties, last word.
    """

    def __init__(
        self,
        broker: str,
        registry_url: str,
        topics: Mapping[str, str],
        workdir: Path,
        commit_interval_s: float = 10.0,
        group_id: str | None = None,
        name: str = "k2-bench-iceberg",
        tasks: int = 1,
        heap_mb: int = 2048,
        partitioned: bool = True,
        session_timeout_s: float = 15.0,
        cache: Path = DEFAULT_CACHE,
        worker_overrides: Mapping[str, str] | None = None,
        connector_overrides: Mapping[str, str] | None = None,
    ) -> None:
        unknown = sorted(set(topics.values()) - {TRADES, QUOTES})
        if unknown:
            raise ConnectError(f"topics must map to {TRADES} or {QUOTES}, not {unknown}")
        if len(set(topics.values())) != len(topics):
            raise ConnectError("each topic needs a table of its own: routing is by topic")
        self.broker = broker
        self.registry_url = registry_url
        self.topics = dict(topics)
        self.workdir = workdir.resolve()
        self.commit_interval_s = commit_interval_s
        self.name = name
        self.group_id = group_id or f"connect-{name}"
        self.control_topic = f"{self.group_id}.control"
        self.tasks = tasks
        self.heap_mb = heap_mb
        self.partitioned = partitioned
        self.session_timeout_s = session_timeout_s
        self.cache = cache
        self.worker_overrides = dict(worker_overrides or {})
        self.connector_overrides = dict(connector_overrides or {})
        self.rest_port = 0
        self.artifacts: Artifacts | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._catalog: SqlCatalog | None = None
        self.starts = 0

    # ---------------------------------------------------------------- paths

    @property
    def catalog_db(self) -> Path:
        return self.workdir / "catalog.db"

    @property
    def warehouse(self) -> Path:
        return self.workdir / "warehouse"

    @property
    def log_path(self) -> Path:
        return self.workdir / "connect.log"

    @property
    def tables(self) -> list[str]:
        """The identifiers of the tables this system lands into, in :meth:`catalog`."""
        return list(self.topics.values())

    # ---------------------------------------------------------------- lifecycle

    def prepare(self) -> None:
        """Everything before the first start: jars, the control topic, the tables, the configuration files."""
        self.artifacts = assemble(self.cache)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.warehouse.mkdir(exist_ok=True)
        settings = Settings(kafka_bootstrap_servers=self.broker)
        # The sink's coordinator and workers talk over this topic; the broker creates no topic by itself.
        ensure_topics(admin_client(settings), [TopicSpec(self.control_topic, 1, 1)])
        catalog = self.catalog()
        for table in self.tables:
            spec = TABLES[table]
            catalog.create_namespace_if_not_exists(spec.namespace)
            # Same columns and day partitions as K2; no sort order, since the sink does not sort.
            catalog.create_table_if_not_exists(
                table,
                spec.schema,
                partition_spec=spec.partition_spec if self.partitioned else UNPARTITIONED_PARTITION_SPEC,
                properties=dict(TABLE_PROPERTIES),
            )
        self.rest_port = _free_port()
        (self.workdir / "log4j2.properties").write_text(LOG4J2)
        (self.workdir / "worker.properties").write_text(_properties(self.worker_config()))
        (self.workdir / "connector.properties").write_text(_properties(self.connector_config()))

    def worker_config(self) -> dict[str, str]:
        """The standalone worker's properties."""
        assert self.artifacts is not None, "prepare() first"
        return {
            "bootstrap.servers": self.broker,
            "key.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
            "value.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
            # Standalone keeps source-connector offsets in a file; a sink has none, the sink's
            # progress is in its consumer group and the Iceberg snapshots.
            "offset.storage.file.filename": str(self.workdir / "connect.offsets"),
            "plugin.path": str(self.artifacts.plugins),
            # Every plugin used has a ServiceLoader manifest (see _MANIFESTS): no class scanning.
            "plugin.discovery": "service_load",
            "listeners": f"http://127.0.0.1:{self.rest_port}",
            "rest.advertised.host.name": "127.0.0.1",
            # Lets the connector name its consumer group (consumer.override.group.id).
            "connector.client.config.override.policy": "All",
            # The sink answers the coordinator's commit requests only inside put(), and Connect
            # calls put() once per consumer poll, which waits up to the time left before this
            # interval's next (for this sink, empty) offset commit: 60 s by default. Once the
            # topics are drained, the last commit would wait that long for its data; 1 s keeps
            # the tail honest, like K2's own poll loop.
            "offset.flush.interval.ms": "1000",
            "consumer.session.timeout.ms": str(round(self.session_timeout_s * 1000)),
            **self.worker_overrides,
        }

    def connector_config(self) -> dict[str, str]:
        """The sink connector's properties."""
        config = {
            "name": self.name,
            "connector.class": CONNECTOR_CLASS,
            "tasks.max": str(self.tasks),
            "topics": ",".join(self.topics),
            "consumer.override.group.id": self.group_id,
            "iceberg.connect.group-id": self.group_id,
            "key.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
            "value.converter": AVRO_CONVERTER,
            "value.converter.apicurio.registry.url": _registry_v2(self.registry_url),
            # Confluent's frame: magic byte 0 and a 4-byte id, which Apicurio's Confluent API
            # hands out as content ids; K2's producer sets no Apicurio headers.
            "value.converter.apicurio.registry.id-handler": FOUR_BYTE_IDS,
            "value.converter.apicurio.registry.use-id": "contentId",
            "value.converter.apicurio.registry.headers.enabled": "false",
            "transforms": "meta",
            "transforms.meta.type": METADATA_TRANSFORM,
            "transforms.meta.field_name": METADATA_PREFIX,
            "iceberg.catalog": CATALOG_NAME,
            "iceberg.catalog.catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
            "iceberg.catalog.uri": f"jdbc:sqlite:{self.catalog_db}",
            "iceberg.catalog.warehouse": self.warehouse.as_uri(),
            # Wait for SQLite's write lock rather than fail a commit when a reader holds it.
            "iceberg.catalog.jdbc.busy_timeout": "10000",
            "iceberg.tables": ",".join(self.tables),
            "iceberg.tables.route-field": f"{METADATA_PREFIX}_topic",
            "iceberg.tables.auto-create-enabled": "false",
            "iceberg.tables.evolve-schema-enabled": "false",
            # The sink's own clients (the control topic's consumers among them) take iceberg.kafka.*.
            "iceberg.kafka.session.timeout.ms": str(round(self.session_timeout_s * 1000)),
            "iceberg.control.topic": self.control_topic,
            "iceberg.control.commit.interval-ms": str(round(self.commit_interval_s * 1000)),
        }
        for topic, table in self.topics.items():
            config[f"iceberg.table.{table}.route-regex"] = _java_regex_literal(topic)
        config.update(self.connector_overrides)
        return config

    def command(self) -> list[str]:
        """The JVM's command line (ConnectStandalone with the worker and connector files)."""
        assert self.artifacts is not None, "prepare() first"
        java_home = os.environ.get("JAVA_HOME")
        java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
        if not java:
            raise ConnectError("`java` was not found (Java 17+): apt-get install openjdk-17-jdk-headless")
        return [
            java,
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            "-cp",
            f"{self.artifacts.runtime}/*",
            # The sink finds the worker's properties by parsing this command line: the class
            # name must be ConnectStandalone and the worker file its first argument.
            "org.apache.kafka.connect.cli.ConnectStandalone",
            str(self.workdir / "worker.properties"),
            str(self.workdir / "connector.properties"),
        ]

    def start(self) -> None:
        """Start the JVM (in its own session, output appended to :attr:`log_path`); returns at once."""
        if self.artifacts is None:
            raise ConnectError("prepare() before start()")
        if self.alive():
            raise ConnectError(f"Connect is already running (pid {self.pids()})")
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} at {time.strftime('%F %T')}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_running(self, timeout_s: float = RUNNING_TIMEOUT_S) -> float:
        """Wait until the connector and all its tasks are RUNNING; the seconds it took.

        Raises ConnectError when the JVM exits, a task fails (with its trace), or the
        timeout passes.
        """
        start = time.monotonic()
        last = "no answer from the REST API yet"
        while time.monotonic() - start < timeout_s:
            if not self.alive():
                raise ConnectError(f"Connect exited with {self.returncode()} before running; see {self.log_path}")
            status = self.status()
            if status is not None:
                self._raise_if_failed(status)
                tasks = status.get("tasks", [])
                states = [status.get("connector", {}).get("state")] + [t.get("state") for t in tasks]
                if tasks and all(s == "RUNNING" for s in states):
                    return time.monotonic() - start
                last = f"states {states}"
            time.sleep(0.5)
        raise ConnectError(f"connector {self.name} not RUNNING within {timeout_s:.0f}s ({last}); see {self.log_path}")

    def check(self) -> None:
        """Raise ConnectError if the JVM exited or the connector or a task FAILED.

        A task that dies (an OutOfMemoryError, a record it cannot convert) leaves the JVM
        running and the REST API answering, and never recovers by itself: a driver waiting
        for rows must call this in its loop or it waits for its timeout.
        """
        if not self.alive():
            raise ConnectError(f"Connect exited with {self.returncode()}; see {self.log_path}")
        status = self.status()
        if status is not None:
            self._raise_if_failed(status)

    def _raise_if_failed(self, status: Mapping[str, Any]) -> None:
        tasks = status.get("tasks", [])
        failed = [t for t in tasks if t.get("state") == "FAILED"]
        if failed or status.get("connector", {}).get("state") == "FAILED":
            trace = str((failed[0] if failed else status["connector"]).get("trace", ""))
            head = "\n".join(trace.splitlines()[:12])
            raise ConnectError(f"connector {self.name} FAILED:\n{head}\nsee {self.log_path}")

    def status(self) -> dict[str, Any] | None:
        """The connector's status from Connect's REST API, or None when it does not answer (yet)."""
        url = f"http://127.0.0.1:{self.rest_port}/connectors/{self.name}/status"
        try:
            with _NO_PROXY.open(url, timeout=2.0) as response:
                data: dict[str, Any] = json.loads(response.read())
                return data
        except (OSError, ValueError, urllib.error.HTTPError):
            return None

    def pids(self) -> list[int]:
        """The processes of this system: the one JVM, while it lives."""
        return [self._proc.pid] if self.alive() and self._proc is not None else []

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def kill(self) -> None:
        """SIGKILL the JVM, as a crash would: nothing flushed, nothing closed."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(STOP_TIMEOUT_S)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (Connect's orderly shutdown), SIGKILL if it has not exited within ``timeout_s``."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(STOP_TIMEOUT_S)

    # ---------------------------------------------------------------- what landed

    def catalog(self) -> SqlCatalog:
        """pyiceberg's view of the sink's JdbcCatalog (same SQLite file, same catalog name)."""
        if self._catalog is None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._catalog = SqlCatalog(
                CATALOG_NAME, uri=f"sqlite:///{self.catalog_db}", warehouse=self.warehouse.as_uri()
            )
        return self._catalog

    def summaries(self) -> dict[str, dict[str, str]]:
        """Each table's current snapshot summary ({} before the first commit)."""
        out: dict[str, dict[str, str]] = {}
        for table in self.tables:
            snapshot = self.catalog().load_table(table).current_snapshot()
            out[table] = dict(snapshot.summary.additional_properties) if snapshot and snapshot.summary else {}
        return out

    def landed_rows(self) -> dict[str, int]:
        """Rows per table, from the current snapshots' ``total-records`` (cheap: no data file read)."""
        return {t: int(s.get("total-records", 0)) for t, s in self.summaries().items()}

    def positions(self, table: str) -> pa.Table:
        """The Kafka (partition, offset) of every row of ``table``: what a kill test counts."""
        return self.catalog().load_table(table).scan(selected_fields=("kafka_partition", "kafka_offset")).to_arrow()
