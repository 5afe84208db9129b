"""Market-data sequence tracking: gaps, duplicates and conflicts per (exchange, symbol)."""
