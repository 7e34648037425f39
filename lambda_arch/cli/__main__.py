"""`python -m lambda_arch.cli`: the same entry point, and exit status, as the `lambda-arch` script."""

from lambda_arch.cli.main import main

raise SystemExit(main())
