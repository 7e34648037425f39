"""`python -m lambda_arch.cli`: the same entry point as the `lambda-arch` script."""

from lambda_arch.cli.main import main

main()
