"""lambda-arch: fresh and correct play-event datasets from a Dagster-orchestrated lambda architecture.

The modules here are the core library and import no Dagster, except `definitions` and `cli`.
"""

__version__ = "0.1.0"
