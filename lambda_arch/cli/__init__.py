"""The `lambda-arch` command line: commands, the headless `run` and `status`."""
