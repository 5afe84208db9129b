"""K2: land exchange market data from Kafka into an Iceberg lakehouse, exactly once."""

__version__ = "0.1.0"
