"""Dagster assets: speed (streaming), batch (daily partitions) and serving groups."""
