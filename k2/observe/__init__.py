"""Observability as pure functions: lag arithmetic, readiness checks, table summaries."""
