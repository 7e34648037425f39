"""S3 helpers shared by Spark's s3a configuration and the Dagster layer (no Dagster here).

Endpoint, region and credentials come from the standard AWS variables (AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL, AWS_REGION or AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN, AWS_PROFILE). boto3 (and so dagster-aws) and pyarrow's S3 file system read
them by themselves (pyarrow 26 honours both endpoint variables: verified against moto_server);
Hadoop's s3a connector does not, so `lambda_arch.runtime.spark.s3a_conf` passes the endpoint on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pyarrow.fs as pafs

S3_SCHEMES = ("s3://", "s3a://")


class S3BucketError(RuntimeError):
    """The warehouse bucket is missing, unreachable or refused; the message names bucket and
    endpoint."""


def is_s3_uri(location: str) -> bool:
    """True for s3:// and s3a:// locations."""
    return location.startswith(S3_SCHEMES)


def hadoop_uri(location: str) -> str:
    """A location as Spark's Hadoop file systems name it: s3:// becomes s3a://."""
    return "s3a://" + location.removeprefix("s3://") if location.startswith("s3://") else location


def pyarrow_uri(location: str) -> str:
    """A location as pyarrow names it: s3a:// (the same bucket seen through Hadoop) becomes s3://."""
    return "s3://" + location.removeprefix("s3a://") if location.startswith("s3a://") else location


def pyarrow_filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's file system and the path in it of a location (a plain path is local)."""
    if "://" not in location:
        return pafs.LocalFileSystem(), location
    return pafs.FileSystem.from_uri(pyarrow_uri(location))


def split_s3_uri(location: str) -> tuple[str, str]:
    """(bucket, key prefix without slashes at either end) of an s3:// or s3a:// URI."""
    if not is_s3_uri(location):
        raise ValueError(f"{location!r} is not an s3:// or s3a:// URI")
    bucket, _, key = location.split("://", 1)[1].partition("/")
    return bucket, key.strip("/")


def s3_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """The S3 endpoint URL from the environment: AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL
    (the precedence of the AWS SDKs); None means AWS itself."""
    environ = os.environ if environ is None else environ
    return environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None


def s3_region(environ: Mapping[str, str] | None = None) -> str | None:
    """The AWS region from the environment (AWS_REGION, then AWS_DEFAULT_REGION)."""
    environ = os.environ if environ is None else environ
    return environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None


def check_bucket(client: Any, location: str) -> None:
    """Raise S3BucketError unless the bucket of `location` exists and these credentials reach it.

    `client` is a boto3 S3 client (the Dagster layer passes dagster-aws's). One HEAD request:
    cheap enough before every run, and it turns a Spark stack trace after a JVM start into one
    line that names the bucket and the endpoint.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _ = split_s3_uri(location)
    endpoint = client.meta.endpoint_url
    where = f"bucket {bucket!r} of LAMBDA_ARCH_WAREHOUSE={location} at endpoint {endpoint}"
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise S3BucketError(f"{where} does not exist: create it or fix the variable") from None
        if code in ("403", "AccessDenied", "Forbidden"):
            raise S3BucketError(
                f"{where} refused access: check the AWS credentials (AWS_ACCESS_KEY_ID, "
                "AWS_PROFILE, ...)"
            ) from None
        raise S3BucketError(f"{where} cannot be checked: {error}") from None
    except BotoCoreError as error:
        # Unreachable endpoint, missing credentials, bad URL: botocore says which.
        raise S3BucketError(f"{where} cannot be reached: {error}") from None
