"""The Dagster definitions of each layer, one `defs` per module; lambda_arch.definitions merges them.

Each layer's assets, checks, jobs, sensors and schedules sit together (as in dagster-open-platform,
where every area has its definitions module), so a layer reads and changes in one place. Resources
and the executor are shared by every layer and added once, by lambda_arch.definitions.
"""
