"""Getting play events in: the event schema and its Spark twin, Kafka offsets, the direct Kafka
source for Spark, and the producer with its synthetic-traffic generator."""
