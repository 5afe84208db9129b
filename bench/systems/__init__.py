"""Other Kafka-to-Iceberg pipelines, each wrapped so the benchmark driver can start, measure and kill it.

Each system lives in its own module with its own dependencies (a virtualenv under
``var/bench/``, never K2's), so that comparing them never changes what K2 runs on.
"""
