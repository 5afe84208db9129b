"""The Iceberg sink: buffered chunks in, one commit per table per flush out."""
