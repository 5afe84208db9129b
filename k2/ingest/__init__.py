"""From raw Kafka records to accepted rows and rejects: pure, testable without Kafka."""
