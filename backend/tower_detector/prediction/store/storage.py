"""Where a store's bytes live: a local folder (LocalFolder) or an S3 prefix (S3Prefix), with one interface of bytes
by name: read, exists, write_once, write, list, remove_stale_temp, close.

write_once creates a name whole and atomically, once: locally a temp file in the same directory, fsync, then
os.link to the final name (which fails if the name exists, so the first writer wins; on file systems without hard
links, check-then-os.replace); on S3 one PUT with If-None-Match: * (conditional write: the object is complete or
absent, and a second PUT of the same key is refused with 412). A worker that dies mid-write leaves no trace but a
temp file (.<name>.<random>.tmp), which remove_stale_temp clears once it is old. A conditional PUT whose response
was lost and is retried gets 412 for our own object: reported as "already there" (False), which is true.
S3-compatible stores that answer 501 to If-None-Match fall back to HEAD-then-PUT, where two racing writers may
both write the same name; the store's writers write the same bytes for a name, so the last full object wins.

S3
    boto3's standard credential chain; AWS_ENDPOINT_URL is honoured. Retries with exponential backoff and jitter
    (botocore's "standard" mode, `retries` attempts in all) on throttling (503 SlowDown, 429), 500/502/504 and
    connection errors. A missing bucket, 403 or missing credentials is a UserError with one line; no secret is
    ever part of a message.
"""

import os
import time

from ...common.atomic import fsync_folder, remove_if_present, temp_path
from ...common.errors import UserError, one_line
from ...common.redaction import redact


class LocalFolder:
    """A store's bytes as files under a local folder; names are /-separated paths below it."""

    def __init__(self, root):
        self.root = root

    def _path(self, name):
        return os.path.join(self.root, *name.split("/"))

    def read(self, name):
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def exists(self, name):
        return os.path.isfile(self._path(name))

    def write_once(self, name, data):
        """Atomically create `name` with `data` unless it exists; True when written."""
        path = self._path(name)
        if os.path.exists(path):
            return False
        tmp = self._write_temp(path, data)
        try:
            try:
                os.link(tmp, path)  # atomic and never replaces: of two racing writers, the first wins
                written = True
            except FileExistsError:
                written = False
            except OSError:  # no hard links here (some network and FUSE file systems): check, then replace
                written = not os.path.exists(path)
                if written:
                    os.replace(tmp, path)
            fsync_folder(os.path.dirname(path))
        finally:
            remove_if_present(tmp)
        return written

    def write(self, name, data):
        """Atomically create or replace `name`."""
        path = self._path(name)
        tmp = self._write_temp(path, data)
        try:
            os.replace(tmp, path)
            fsync_folder(os.path.dirname(path))
        finally:
            remove_if_present(tmp)

    def _write_temp(self, path, data):
        folder = os.path.dirname(path)
        tmp = temp_path(path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like any new file
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name points at it
        except OSError as exc:  # a full disk, a quota, a folder made read-only: the user's to fix
            remove_if_present(tmp)
            raise UserError(f"cannot write to the store {self.root}: {one_line(exc)}") from None
        except BaseException:
            remove_if_present(tmp)
            raise
        return tmp

    def list(self, prefix):
        """Names under `prefix` (a folder path ending with /), recursively."""
        top = self._path(prefix.rstrip("/"))
        for folder, _, files in os.walk(top):
            rel = os.path.relpath(folder, self.root).replace(os.sep, "/")
            yield from (f"{rel}/{f}" for f in files)

    def remove_stale_temp(self, max_age):
        now = time.time()
        for folder, _, files in os.walk(self.root):
            for f in files:
                path = os.path.join(folder, f)
                if f.startswith(".") and f.endswith(".tmp"):  # temp_path's names
                    try:
                        if now - os.stat(path).st_mtime > max_age:
                            os.remove(path)
                    except OSError:
                        pass

    def close(self):
        pass


class S3Prefix:
    """A store's bytes as objects under s3://bucket/prefix; check() makes sure the bucket can be read."""

    def __init__(self, bucket, prefix, *, retries, timeout, concurrency, page_size):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix, self.page_size = bucket, prefix, page_size
        self.spec = f"s3://{bucket}/{prefix}"
        config = Config(retries={"total_max_attempts": max(1, int(retries)), "mode": "standard"},
                        connect_timeout=timeout, read_timeout=timeout, max_pool_connections=max(10, concurrency))
        # a session of our own: credentials are resolved now, not cached from an earlier store's (boto3's default
        # session keeps the first ones it found); the client is thread-safe; the endpoint from AWS_ENDPOINT_URL
        self.s3 = boto3.session.Session().client("s3", config=config)
        self._conditional = True  # If-None-Match: * works, until a store answers 501

    def check(self):
        self._call("head_bucket", Bucket=self.bucket)

    def _call(self, op, **kwargs):
        """One S3 call; botocore has retried transient errors. Auth and missing buckets -> UserError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.s3, op)(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            self._user_error(exc, bucket_call=op == "head_bucket")
            raise

    def _user_error(self, exc, bucket_call=False):
        """Raise a one-line UserError for errors that are the user's to fix; return for the others."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            raise UserError(f"no AWS credentials for {self.spec}: set AWS_PROFILE or AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY, or run with an instance role") from None
        if isinstance(exc, EndpointConnectionError):
            raise UserError(f"cannot reach S3 for {self.spec}: {redact(one_line(exc))}") from None
        if isinstance(exc, ClientError):
            code, status = _error_code(exc)
            if code == "NoSuchBucket" or (bucket_call and status == 404):
                raise UserError(f"S3 bucket {self.bucket!r} does not exist ({self.spec})") from None
            if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise UserError(f"access denied to {self.spec} ({code or status}): check the AWS credentials "
                                "and the bucket's policy") from None

    def read(self, name):
        from botocore.exceptions import ClientError

        try:
            return self._call("get_object", Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
        except ClientError as exc:
            if _error_code(exc)[0] in ("NoSuchKey", "404"):
                return None
            raise

    def exists(self, name):
        from botocore.exceptions import ClientError

        try:
            self._call("head_object", Bucket=self.bucket, Key=self.prefix + name)
            return True
        except ClientError as exc:
            if _error_code(exc)[1] == 404:
                return False
            raise

    def write_once(self, name, data):
        """One conditional PUT (If-None-Match: *); True when written, False when the key exists."""
        from botocore.exceptions import ClientError

        key = self.prefix + name
        for attempt in range(6):
            if not self._conditional:
                if self.exists(name):
                    return False
                self._call("put_object", Bucket=self.bucket, Key=key, Body=data)
                return True
            try:
                self._call("put_object", Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except ClientError as exc:
                code, status = _error_code(exc)
                if status == 412 or code == "PreconditionFailed":
                    return False  # it exists: another worker's, or ours whose first answer was lost
                if (status == 409 or code == "ConditionalRequestConflict") and attempt < 5:
                    time.sleep(0.05 * 2**attempt)  # a concurrent conditional write to this key is under way
                elif status == 501 or code == "NotImplemented":
                    self._conditional = False  # an S3-compatible store without conditional writes
                else:
                    raise
        raise AssertionError("unreachable")

    def write(self, name, data):
        self._call("put_object", Bucket=self.bucket, Key=self.prefix + name, Body=data)

    def list(self, prefix):
        from botocore.exceptions import BotoCoreError, ClientError

        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix, PaginationConfig={"PageSize": self.page_size})
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self.prefix):]
        except (BotoCoreError, ClientError) as exc:
            self._user_error(exc, bucket_call=True)
            raise

    def remove_stale_temp(self, max_age):
        pass  # a PUT is atomic: S3 never holds partial objects

    def close(self):
        self.s3.close()


def _error_code(exc):
    err = exc.response.get("Error", {})
    return str(err.get("Code", "")), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
