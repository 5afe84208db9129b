"""One typed settings object, read once from ``K2_*`` environment variables.

The Iceberg catalog is *not* configured here: K2 uses pyiceberg's own convention
(``.pyiceberg.yaml`` or ``PYICEBERG_CATALOG__K2__*``) through :mod:`k2.catalog`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from k2.errors import SettingsError

DAY_MS = 24 * 60 * 60 * 1000


class Settings(BaseSettings):
    """Everything K2 reads from its environment; secrets are masked when printed."""

    # An empty variable is an unset one (`K2_KAFKA_SSL_CA_FILE=` in a compose file or a ConfigMap).
    model_config = SettingsConfigDict(env_prefix="K2_", extra="ignore", frozen=True, env_ignore_empty=True)

    # Services
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]."
    )
    schema_registry_url: str = Field(
        "http://127.0.0.1:8081/apis/ccompat/v7", description="Confluent-compatible schema registry base URL."
    )
    schema_registry_basic_auth: SecretStr | None = Field(None, description="user:password for the registry, if any.")
    schema_registry_ca_file: Path | None = Field(
        None, description="CA certificate (PEM) to verify an https registry with, when the system's do not."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client K2 builds connects (a managed Kafka: SASL_SSL)."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_file: Path | None = Field(
        None, description="CA certificate (PEM) of the brokers (default: the system's)."
    )
    kafka_ssl_cert_file: Path | None = Field(None, description="Client certificate (PEM), for mutual TLS.")
    kafka_ssl_key_file: Path | None = Field(None, description="Its private key (PEM).")
    kafka_ssl_key_password: SecretStr | None = None

    # Topics
    trades_topic: str = "market.trades.raw"
    quotes_topic: str = "market.quotes.raw"
    reference_topic: str = "market.reference_data"
    rejects_topic: str = "market.rejects"
    trades_partitions: int = Field(6, ge=1)
    quotes_partitions: int = Field(6, ge=1)
    reference_partitions: int = Field(1, ge=1)
    rejects_partitions: int = Field(6, ge=1)
    market_retention_ms: int = Field(7 * DAY_MS, ge=-1)
    rejects_retention_ms: int = Field(30 * DAY_MS, ge=-1)
    replication_factor: int = Field(1, ge=1)

    # Iceberg
    catalog_name: str = Field("k2", description="Name passed to pyiceberg's load_catalog().")
    catalog_timeout_s: float = Field(
        10.0, gt=0, description="Deadline of one catalog or object-store request (pyiceberg sets none for REST)."
    )
    var_dir: Path = Field(Path("var"), description="Where the embedded catalog and warehouse live by default.")

    # Worker
    app_id: str = Field("k2", description="Faust application id (the consumer group).")
    web_port: int = Field(6066, ge=1, le=65535)
    web_host: str = "127.0.0.1"
    flush_interval_s: float = Field(5.0, gt=0)
    flush_max_rows: int = Field(
        200_000,
        ge=1,
        description="Buffered events that start a flush before the timer does; twice this is the buffer's bound. "
        "Each flush is one commit per table: at full rate this sets the commit frequency, and the files' size.",
    )
    ingest_batch_max: int = Field(
        20_000,
        ge=1,
        description="Records one fetch hands to the ingest agents at most (faust's broker_max_poll_records). "
        "Each topic's share (its partitions' batches) is taken in blocks of at most K2_INGEST_BLOCK_MAX records.",
    )
    ingest_block_max: int = Field(
        5_000,
        ge=1,
        description="Records the worker classifies and writes in one stretch of its event loop at most: a larger "
        "fetch (after a stall, or on a backlog) is cut into blocks of this many, and timers and flushes run "
        "between them. Larger blocks cost less per event on a backlog (a tenth less at 20,000) and hold the loop "
        "longer.",
    )
    fetch_min_bytes: int = Field(
        65_536,
        ge=1,
        description="Bytes the broker gathers before it answers a fetch (Kafka's fetch.min.bytes), unless "
        "K2_FETCH_MAX_WAIT_MS passes first. At a live rate a fetch otherwise answers with the few records "
        "that just arrived, and a batch costs more per record the fewer it holds.",
    )
    fetch_max_wait_ms: int = Field(
        100,
        ge=0,
        le=1_500,
        description="How long the broker may hold a fetch for K2_FETCH_MIN_BYTES (Kafka's fetch.max.wait.ms): "
        "what it adds to freshness at most.",
    )
    worker_id: str | None = Field(None, description="Identifier written into Iceberg commits; defaults to host:pid.")
    session_timeout_s: float = Field(
        15.0,
        ge=6,
        description="Kafka group session timeout: how long a dead worker keeps its partitions before the group "
        "moves on.",
    )
    shutdown_timeout_s: float = Field(
        20.0,
        gt=0,
        description="On SIGTERM, how long the worker waits for batches in flight and its final flush before it stops "
        "(keep the container's grace period above it).",
    )
    revoke_timeout_s: float = Field(
        10.0, gt=0, description="How long a revocation waits for batches in flight to become durable."
    )
    position_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A partition assigned to this worker must be consuming this long after faust restored its "
        "tables; past it, readiness names the partition and k2_partitions_not_consuming counts it.",
    )
    stuck_exit_s: float = Field(
        180.0,
        gt=0,
        description="A partition still not consuming after this long, for no reason outside K2 (a catalog or broker "
        "outage is one), makes the worker exit non-zero, so the group gives its partitions to another worker.",
    )
    metadata_refresh_s: float = Field(
        30.0,
        gt=0,
        description="How often the consumer refreshes topic metadata: partitions added to a source topic are "
        "noticed (and the group rebalanced) within about this long.",
    )
    stall_after_s: float = Field(
        30.0, gt=0, description="A partition with lag and no batch taken for this long makes the worker not ready."
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024 * 1024,
        description="Largest record K2 writes (a chunk, a reject copy): set on the rejects topic and the "
        "worker's changelog topics, and as the producer's limit; must exceed the source topics' own limit.",
    )

    # Market-data guarantees
    dedup_window: int = Field(
        1000,
        ge=1,
        description="Sequence numbers per (exchange, symbol) kept to recognise duplicates (the last N); "
        "also how many gap/duplicate decisions per key a re-delivery after a crash can find again.",
    )

    # Table maintenance (`k2 maintain`, and the group's leader worker on two timers)
    maintain_interval_s: float = Field(
        3600.0,
        ge=0,
        description="Run the whole maintenance (compaction, expiry, orphan files) this often in the group's leader "
        "worker (0: only `k2 maintain`).",
    )
    maintain_expire_interval_s: float = Field(
        300.0,
        ge=0,
        description="Expire snapshots this often in the group's leader worker (0: with the whole maintenance only). "
        "Metadata only: it keeps what every commit reads and writes near the retention, however long K2 runs.",
    )
    maintain_snapshot_retention_s: float = Field(
        3600.0,
        ge=0,
        description="Snapshots older than this are expired (the newest ones are kept anyway): how far a reader that "
        "follows a table may fall behind. Each snapshot kept adds about 1 KiB to the metadata every commit reads "
        "and writes.",
    )
    maintain_keep_snapshots: int = Field(50, ge=1, description="The newest snapshots kept whatever their age.")
    maintain_max_snapshots: int = Field(
        1000,
        ge=1,
        description="Snapshots a table keeps at most, however young (never fewer than K2_MAINTAIN_KEEP_SNAPSHOTS): "
        "every commit reads and writes the table's metadata, which lists them all. At a 1 s flush an hour's "
        "retention would be 3,600; a reader following the table must not fall further behind than this many.",
    )
    maintain_orphan_min_age_s: float = Field(
        86_400.0,
        ge=0,
        description="Unreferenced files younger than this are left alone (a commit in flight may own them).",
    )
    maintain_target_file_mb: int = Field(128, ge=1, description="Size compaction writes data files at.")
    maintain_min_files: int = Field(
        4, ge=2, description="A past day is compacted when it has at least this many files below the target size."
    )
    maintain_compact_group_rows: int = Field(
        1_000_000,
        ge=1,
        description="Compaction reads, sorts and writes a day's files a group of at most this many rows at a time "
        "(a file larger than that alone): what it holds in memory (about 0.5 KiB a trade, read and sorted), whatever "
        "the day's size. Each group's rows are sorted and written as files of their own.",
    )

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        sasl = self.kafka_security_protocol.startswith("SASL")
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"K2_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs K2_KAFKA_SASL_USERNAME and "
                "K2_KAFKA_SASL_PASSWORD"
            )
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            raise ValueError("K2_KAFKA_SSL_CERT_FILE and K2_KAFKA_SSL_KEY_FILE go together (mutual TLS)")
        for name in ("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file", "schema_registry_ca_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"K2_{name.upper()}={path}: no such file")
        return self

    @property
    def source_topics(self) -> tuple[str, str, str]:
        return (self.trades_topic, self.quotes_topic, self.reference_topic)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use.

    Raises:
        SettingsError: a ``K2_*`` variable holds a value K2 cannot use; the message names
            each variable, its value and what is expected.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_invalid(exc)) from None


def describe_invalid(exc: ValidationError) -> str:
    """One line per bad ``K2_*`` variable: its name, the value given and what would do."""
    from k2.secrets import MASK, credential_key

    lines = []
    for err in exc.errors():
        if not err["loc"]:  # a rule over several variables: its message names them
            lines.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        name = "K2_" + "_".join(str(p) for p in err["loc"]).upper()
        shown = MASK if credential_key(name) else repr(err.get("input"))
        lines.append(f"{name}={shown}: {err['msg']}")
    return "invalid settings: " + "; ".join(lines) + " (see README, Configuration)"
