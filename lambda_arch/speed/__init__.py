"""The speed layer: streaming queries from Kafka into the lake and the per-minute view deltas,
their runner and checkpoints, and the lag of those checkpoints behind the topic."""
