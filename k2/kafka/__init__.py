"""K2's Kafka transport for faust: batch delivery of source partitions, commit offsets owned by the sink."""
