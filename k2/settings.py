"""One typed settings object, read once from ``K2_*`` environment variables.

The Iceberg catalog is *not* configured here: K2 uses pyiceberg's own convention
(``.pyiceberg.yaml`` or ``PYICEBERG_CATALOG__K2__*``) through :mod:`k2.catalog`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DAY_MS = 24 * 60 * 60 * 1000


class Settings(BaseSettings):
    """Everything K2 reads from its environment; secrets are masked when printed."""

    model_config = SettingsConfigDict(env_prefix="K2_", extra="ignore", frozen=True)

    # Services
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]."
    )
    schema_registry_url: str = Field(
        "http://127.0.0.1:8081/apis/ccompat/v7", description="Confluent-compatible schema registry base URL."
    )
    schema_registry_basic_auth: SecretStr | None = Field(None, description="user:password for the registry, if any.")

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
    var_dir: Path = Field(Path("var"), description="Where the embedded catalog and warehouse live by default.")

    # Worker
    app_id: str = Field("k2", description="Faust application id (the consumer group).")
    web_port: int = Field(6066, ge=1, le=65535)
    web_host: str = "127.0.0.1"
    flush_interval_s: float = Field(5.0, gt=0)
    flush_max_rows: int = Field(50_000, ge=1)
    ingest_batch_max: int = Field(5000, ge=1, description="Events per micro-batch an ingress agent takes at most.")
    ingest_batch_within_s: float = Field(0.5, gt=0, description="How long an agent waits to fill a micro-batch.")
    worker_id: str | None = Field(None, description="Identifier written into Iceberg commits; defaults to host:pid.")

    # Market-data guarantees
    dedup_window: int = Field(
        1000,
        ge=1,
        description="Sequence numbers per (exchange, symbol) kept to recognise duplicates (the last N); "
        "also how many gap/duplicate decisions per key a re-delivery after a crash can find again.",
    )

    @property
    def source_topics(self) -> tuple[str, str, str]:
        return (self.trades_topic, self.quotes_topic, self.reference_topic)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
