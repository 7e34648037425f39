"""`python -m lambda_arch.runtime.final_landing`: land what the topic holds, once, and say so.

`lambda-arch up` runs it as a child before it stops a memory broker (everything the broker holds
is lost with it): the speed layer's landing query (`lambda_arch.speed.layer.run_landing`, the
code the landing asset of speed_job runs) with trigger availableNow, on the Spark session of the
settings (up's Spark Connect server). A child, so that up can bound it by killing it.

Prints one JSON line: {"records": N, "seconds": S} (stdout); a failure: one line on stderr,
exit 2.
"""

from __future__ import annotations

import json
import sys
import time

from lambda_arch.common.config import load_settings


def main() -> int:
    started = time.monotonic()
    try:
        from lambda_arch.runtime.spark import build_session
        from lambda_arch.speed.layer import run_landing

        settings = load_settings()
        spark = build_session(settings, app_name="lambda-arch-final-landing")
        report = run_landing(spark, settings)
    except Exception as error:  # reported by up in one line; the caller bounds the time
        print(
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
            file=sys.stderr,
        )
        return 2
    records = int(report.observed.get("landing.records", report.events_read))
    print(json.dumps({"records": records, "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
