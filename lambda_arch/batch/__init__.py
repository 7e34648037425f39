"""The lake (Hive tables of raw and quarantined events) and the batch layer that recomputes each
view one daily partition at a time from it."""
