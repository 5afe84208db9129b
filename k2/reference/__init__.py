"""Reference data kept on every worker, and the trades and quotes that do not fit it."""
