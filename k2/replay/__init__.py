"""Replay recorded market data (ASX CSV files) into Kafka as if it were a live feed."""
