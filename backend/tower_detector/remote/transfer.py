"""Moving inputs and outputs between this machine, S3 and the workers.

Inputs (a dataset folder, a model folder, a params file) go up once, content-addressed: a folder becomes one
uncompressed tar object (thousands of small tiles as one object: the original project's one-object-per-tile S3
traffic was its largest bill), named by its sha256, so submitting the same input twice uploads nothing. A worker
fetches an input by what its URI names: a `.tar` object is unpacked, another object is one file, anything else a prefix.

Outputs of train and search (a model or search folder) are mirrored up by DirSync while the job runs, so a
retry on another instance (a spot reclaim) pulls them down and resumes. See DirSync for what a reclaim keeps.
"""

import hashlib
import os
import tarfile
import tempfile
import threading

from ..common.errors import UserError


def parse_s3(uri):
    """'s3://bucket/key' -> (bucket, key); key may be ''."""
    if not uri.lower().startswith("s3://"):
        raise UserError(f"not an S3 URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise UserError(f"no bucket in {uri}")
    return bucket, key


def s3_client():
    """A worker's S3 client: the standard credential chain (a Batch job role), AWS_ENDPOINT_URL honoured."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client("s3", config=Config(retries={"mode": "standard", "total_max_attempts": 10}))


# ---------------------------------------------------------------------------------------------
# inputs: local -> S3 (at submit time)
# ---------------------------------------------------------------------------------------------
def pack_folder(folder, top_level_only=False):
    """A temporary tar file of `folder` (sorted, mtimes zeroed: same content, same bytes) and its sha256."""
    fd, path = tempfile.mkstemp(suffix=".tar")
    os.close(fd)
    digest = hashlib.sha256()

    def clean(info):
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    names = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        if top_level_only:
            dirs[:] = []
        names += [os.path.join(root, f) for f in sorted(files) if not f.endswith(".tmp")]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            tar.add(name, arcname=os.path.relpath(name, folder).replace(os.sep, "/"), filter=clean)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return path, digest.hexdigest()


def upload_input(aws, local, bucket, prefix, kind, top_level_only=False):
    """Upload a local file or folder under s3://bucket/prefix/inputs/ unless the same content is there; its URI."""
    from botocore.exceptions import ClientError

    if os.path.isdir(local):
        path, sha = pack_folder(local, top_level_only=top_level_only)
        key, cleanup = f"{prefix}inputs/{kind}-{sha[:20]}.tar", path
    elif os.path.isfile(local):
        with open(local, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        path, cleanup = local, None
        key = f"{prefix}inputs/{kind}-{sha[:20]}{os.path.splitext(local)[1].lower()}"
    else:
        raise UserError(f"{kind}: no such file or folder: {local}")
    try:
        try:
            aws.client("s3").head_object(Bucket=bucket, Key=key)
            return f"s3://{bucket}/{key}"  # already there: content-addressed
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                from .aws import raise_user_error

                raise_user_error(exc, f"s3://{bucket}", aws.region)
                raise
        upload(aws, path, bucket, key)
        return f"s3://{bucket}/{key}"
    finally:
        if cleanup:
            os.remove(cleanup)


def upload(aws, path, bucket, key):
    """One file to S3 (multipart when large); a refused upload is one line."""
    from boto3.exceptions import S3UploadFailedError

    try:
        aws.call("s3", "upload_file", what=f"s3://{bucket}", Filename=path, Bucket=bucket, Key=key)
    except S3UploadFailedError as exc:  # boto3's transfer wraps the ClientError in its own
        raise UserError(f"upload to s3://{bucket}/{key} failed: {' '.join(str(exc).split())}") from None


# ---------------------------------------------------------------------------------------------
# inputs: S3 -> the worker
# ---------------------------------------------------------------------------------------------
def read_json(aws, bucket, key):
    """The JSON object at s3://bucket/key, None when there is none, a one-line UserError when it is not JSON."""
    import json

    from botocore.exceptions import ClientError

    from .aws import error_code, raise_user_error

    try:
        body = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code, status = error_code(exc)
        if status == 404 or code in ("NoSuchKey", "404"):
            return None
        raise_user_error(exc, f"s3://{bucket}/{key}", aws.region)
        raise
    try:
        return json.loads(body)
    except ValueError:
        raise UserError(f"s3://{bucket}/{key} is not valid JSON: fix or remove it") from None


def fetch_input(s3, uri, dest):
    """Bring `uri` to the local path `dest`: a .tar is unpacked into the folder dest, another object becomes the
    file dest, a prefix the folder dest. Returns dest. A folder already complete from an earlier attempt is kept."""
    bucket, key = parse_s3(uri)
    marker = os.path.join(dest, ".fetched")
    if os.path.isfile(marker):
        with open(marker) as f:
            if f.read() == uri:
                return dest
    if key.endswith(".tar"):
        os.makedirs(dest, exist_ok=True)
        with tempfile.TemporaryFile() as tmp:
            s3.download_fileobj(bucket, key, tmp)
            tmp.seek(0)
            with tarfile.open(fileobj=tmp) as tar:
                # the "data" filter refuses absolute paths, links out of dest and device files
                tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    elif key and not key.endswith("/") and _is_object(s3, bucket, key):
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        s3.download_file(bucket, key, dest)
        return dest
    else:
        n = download_prefix(s3, bucket, key, dest)
        if not n:
            raise UserError(f"nothing at {uri}")
    with open(marker, "w") as f:
        f.write(uri)
    return dest


def _is_object(s3, bucket, key):
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return False
        raise


def list_keys(s3, bucket, prefix):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from (o["Key"] for o in page.get("Contents", []))


def download_prefix(s3, bucket, prefix, dest, overwrite=True):
    """Every object under prefix/ into dest (keeping the relative layout); returns how many were found."""
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    n = 0
    for key in list_keys(s3, bucket, prefix):
        rel = key[len(prefix):]
        if not rel or rel.endswith("/"):
            continue
        path = os.path.join(dest, *rel.split("/"))
        if os.path.abspath(path) != os.path.abspath(dest) and not os.path.abspath(path).startswith(
                os.path.abspath(dest) + os.sep):
            continue  # a key with ../ in it would land outside dest
        n += 1
        if not overwrite and os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, key, path + ".part")
        os.replace(path + ".part", path)
    return n


# ---------------------------------------------------------------------------------------------
# outputs: the worker's folder <-> S3, while it runs
# ---------------------------------------------------------------------------------------------
class DirSync:
    """Mirror a local output folder to s3://bucket/prefix/: pull() before the job, push() during and after.

    What a spot reclaim keeps: the files pushed before it. A file is pushed during the run only once it has
    stopped changing between two scans (`interval` seconds apart, 120 s by default), so a file caught half-written
    (a Keras checkpoint being saved) is not uploaded until it is whole; the final push, after the command returns,
    takes everything. So a reclaim loses at most the work of the last interval plus the epoch under way: train
    resumes from its last BackupAndRestore checkpoint that reached S3 (Keras keeps two), and search from its
    history.json (rewritten after every trial) with the running trial's own checkpoint. Nothing is ever deleted
    on S3: a file removed locally stays there.
    """

    def __init__(self, s3, local, bucket, prefix, interval=120.0, log=None):
        self.s3, self.local, self.bucket = s3, local, bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        self.interval = interval
        self.log = log or (lambda message: None)
        self._sent = {}  # relative path -> (size, mtime_ns) as uploaded (or pulled)
        self._seen = {}  # relative path -> (size, mtime_ns) at the previous scan
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread = None

    def pull(self):
        """Bring down what an earlier attempt pushed (files already here are kept: they are newer or equal)."""
        os.makedirs(self.local, exist_ok=True)
        n = download_prefix(self.s3, self.bucket, self.prefix, self.local, overwrite=False)
        for rel, stat in self._scan():
            self._sent[rel] = stat
        return n

    def _scan(self):
        for root, _, files in os.walk(self.local):
            for f in files:
                if f.endswith((".tmp", ".part")):
                    continue
                path = os.path.join(root, f)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # removed while we looked
                yield os.path.relpath(path, self.local).replace(os.sep, "/"), (st.st_size, st.st_mtime_ns)

    def push(self, settled_only=False):
        """Upload the files changed since their last upload (settled_only: and unchanged since the last scan)."""
        with self._lock:
            n = 0
            for rel, stat in list(self._scan()):
                if self._sent.get(rel) == stat:
                    continue
                previous, self._seen[rel] = self._seen.get(rel), stat
                if settled_only and previous != stat:
                    continue  # changed since the last scan: maybe being written; next time
                try:
                    self.s3.upload_file(os.path.join(self.local, *rel.split("/")), self.bucket, self.prefix + rel)
                except FileNotFoundError:
                    continue
                self._sent[rel] = stat
                n += 1
            return n

    def start(self):
        self._thread = threading.Thread(target=self._run, name="output-sync", daemon=True)
        self._thread.start()

    def kick(self):
        """Push settled files now (on SIGTERM: a spot notice leaves about two minutes)."""
        self._kick.set()

    def _run(self):
        while not self._stop.is_set():
            self._kick.wait(self.interval)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                n = self.push(settled_only=True)
                if n:
                    self.log(f"synced {n} files to s3://{self.bucket}/{self.prefix}")
            except Exception as exc:  # a failed sync is retried next time; the job goes on
                self.log(f"sync to S3 failed, will retry: {type(exc).__name__}: {exc}")

    def close(self):
        """Stop the thread and push everything (the command has returned: no file is being written)."""
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join()
        return self.push(settled_only=False)
