"""Tile directories: label-maker's layout of x-y-z.{jpg,png,webp} files, in a local folder or under an S3 prefix.

Spec
    an existing directory or s3://bucket/prefix of x-y-z.{jpg,png,webp} files, one extension per zoom (the first
    file seen decides); boto3's standard credential chain, AWS_ENDPOINT_URL honoured. A zoom with no files is
    refused up front. A missing file is a missing tile; S3's 401/403 a refused credential.
"""

import os
import re

from ...common.errors import UserError, one_line
from ...common.redaction import redact
from .base import ImagerySource, TileError

_TILE_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)\.(jpe?g|png|webp)$", re.IGNORECASE)
_LIST_PAGES = 20  # S3 listing pages (1,000 keys each) searched for a zoom's tiles


class TileDirSource(ImagerySource):
    kind = "tiledir"

    def __init__(self, spec, *, retries=4, timeout=30.0, **common):
        super().__init__(redact(spec), **common)
        self._ext = {}  # zoom -> the file extension seen for it
        if spec.lower().startswith("s3://"):
            import boto3
            from botocore.config import Config

            bucket, _, prefix = spec[5:].partition("/")
            if not bucket:
                raise UserError(f"no bucket in {self.description}; expected s3://bucket/prefix")
            self._bucket = bucket
            self._prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
            config = Config(max_pool_connections=self.concurrency, connect_timeout=timeout, read_timeout=timeout,
                            retries={"max_attempts": retries + 1, "mode": "standard"})
            self._s3 = boto3.client("s3", config=config)  # clients are thread-safe; endpoint from AWS_ENDPOINT_URL
        else:
            self._root = spec
            self._s3 = None

    def _names(self):
        """File names in the directory, lazily (S3: up to _LIST_PAGES pages)."""
        if self._s3 is None:
            with os.scandir(self._root) as entries:
                yield from (e.name for e in entries)
            return
        from botocore.exceptions import BotoCoreError, ClientError

        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=self._prefix, PaginationConfig={"MaxItems": _LIST_PAGES * 1000})
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self._prefix):]
        except (BotoCoreError, ClientError) as exc:
            raise UserError(f"cannot list imagery {self.description}: {one_line(exc)}") from None

    def _check_zoom(self, z):
        seen = set()
        for name in self._names():
            match = _TILE_NAME.match(name)
            if match:
                if int(match[3]) == z:
                    self._ext[z] = match[4]
                    return
                seen.add(int(match[3]))
        found = f"zooms {', '.join(map(str, sorted(seen)))}" if seen else "no x-y-z.jpg/png/webp tiles"
        raise UserError(f"imagery {self.description} has no zoom-{z} tiles (x-y-{z}.jpg/png/webp); it has {found}")

    def _load(self, x, y, z):
        name = f"{x}-{y}-{z}.{self._ext[z]}"
        if self._s3 is None:
            try:
                with open(os.path.join(self._root, name), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                raise TileError("missing tile", "missing") from None
            except OSError as exc:
                raise TileError(f"read error: {exc.strerror or exc}", "transient") from None
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._s3.get_object(Bucket=self._bucket, Key=self._prefix + name)["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404") or status == 404:
                raise TileError("missing tile", "missing") from None
            if status in (401, 403):
                raise TileError(f"S3 {code or status}", "auth") from None
            raise TileError(f"S3 {code or status}", "transient") from None
        except BotoCoreError as exc:
            raise TileError(f"S3 error: {one_line(exc)}", "transient") from None

    def close(self):
        super().close()
        if self._s3 is not None:
            self._s3.close()
