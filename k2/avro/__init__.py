"""Avro contracts, the Confluent wire format and the schema-registry client K2 uses."""
