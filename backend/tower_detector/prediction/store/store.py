"""The results store of a prediction job: a local directory or s3://bucket/prefix, with one layout.

    job.json                                the job spec (written once; a resume must match its identity)
    cover.json                              the tile cover, TileCover.save's format with the shards (written once)
    failures-marked.json                    written with the job: chunks with failures carry a .failed marker
    chunks/s{shard:04d}/c{index:07d}.npz    immutable chunk files, one per fixed run of one shard's tiles
    chunks/s{shard:04d}/c{index:07d}.failed empty marker, written before a chunk that holds failed tiles
    chunks/s{shard:04d}/c{index:07d}.r{k:02d}.npz  immutable retry layer k: the chunk's tiles that had failed
                                            transiently in layer k-1 (layer 0: the chunk), scored again
    manifest.json                           progress summary written by finalize() (optional, rewritable)

    store = open_store("s3://bucket/zambia", create=True)        # or a local directory
    store.prepare_job({"identity": {"model": fp, "imagery": desc}, "model": path}, cover, shards, chunk_size=5000)
    scan = store.scan()
    for retry in store.pending_retries(scan=scan):               # tiles that failed transiently last time
        store.commit_job()
        store.write_retry(retry, scores, cam_x, cam_y, errors)
    for shard, index in store.missing_chunks(done=scan.done):
        xs, ys = store.plan.chunk_tiles(shard, index)
        store.commit_job()                                       # once there is something to store
        store.write_chunk(shard, index, xs, ys, scores, cam_x, cam_y, errors)   # -> ChunkWrite(written, nbytes)
    store.finalize({"timings": ...})

job.json
    {"format": "tower-detector/prediction-job", "version": 1, "identity": {...}, "plan": {...}, ...}
    `identity` is the caller's: whatever makes two runs the same job (model fingerprint, imagery description,
    preprocessing). `plan` is the store's: zoom, tile count, run count, sha256 of the cover's runs, chunk_size,
    the shards [{x_start, x_end, count, chunks}] and the total chunk count. A resume (create_job on a store that
    has a job) must give an equal identity and plan, or it is refused: chunks of another job would be mixed in.
    Other keys (paths, creation time, host) are the caller's notes and may differ on resume. String values
    are redacted (URL tokens -> ***) before writing, so secrets never reach the store.

Chunk payload (.npz, compressed; np.load(..., allow_pickle=False) reads it)
    x, y                 uint32    the chunk's tiles, in plan order
    score                float32   P(tower) in 0..1; NaN where not scored (always NaN for failed tiles)
    cam_x, cam_y         float32   most likely tower position inside the tile, tile pixels 0..256; NaN if none
    error_index          int32     positions (into x, y) of failed tiles
    error_reason         unicode   why each failed (e.g. "HTTP 404"), redacted
    error_transient      bool      per failed tile: the failure may pass (an outage): the tile is not done
    pos                  int32     retry layers only: positions of the layer's tiles x, y in its chunk
    A chunk is read with its retry layers applied (read_chunk, iter_chunks): each layer's scores, points and
    failures replace those of its tiles. Chunks written before error_transient existed have it derived from
    the reason (transient_reason), and a store written before the markers is marked once, on its first scan.

Failed tiles
    A tile is done once it has a score or a permanent failure (no imagery there, a corrupt tile). A tile that
    failed transiently is not: pending_retries() lists them (reading only the marked chunks), and the next run
    scores exactly those tiles into the chunk's next retry layer, written once like a chunk. progress() and the
    manifest count both kinds, and say complete only when every chunk is there and no tile waits for a retry.

Exactly once
    Chunk boundaries are fixed by the plan (plan.py), which the job spec pins (a resume with another cover, shard
    list or chunk size is refused). A chunk is written whole and atomically, once (storage.py's write_once: a
    local link or an S3 conditional PUT; the first writer wins). A resume lists the chunks present (one paginated
    listing) and computes only the missing ones. So every tile lies in exactly one chunk, every chunk is present
    once with one payload, and a worker that dies mid-chunk leaves no trace but a temp file: its chunk is
    recomputed by the next run, never half-counted. Retry layers follow the same rule: layer k's tiles are a
    function of the layers before it, and it is written once. Where a store cannot write conditionally, two racing
    workers may both write a chunk; both wrote the same tiles with the same model, so no tile is lost or counted
    twice.

Cost per checkpoint
    Each chunk is its own file or object; nothing that grows with progress is rewritten (the original
    project re-uploaded its whole JSON at every save). ChunkWrite.nbytes and Store.stats record the bytes
    written per chunk.
"""

import io
import json
import os
import re
import secrets
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from ...common.errors import UserError, one_line
from ...common.redaction import redact
from ...geo.cover import FORMAT as COVER_FORMAT
from ...geo.cover import TileCover
from .plan import ChunkPlan, check_shards, cover_hash
from .storage import LocalFolder, S3Prefix

JOB_FORMAT = "tower-detector/prediction-job"
MANIFEST_FORMAT = "tower-detector/prediction-manifest"
TILE_PIXELS = 256
# chunks/s0001/c0000042.npz (a chunk), .r01.npz (its first retry layer), .failed (marker: it holds failures)
_CHUNK_NAME = re.compile(r"^chunks/s(\d{4})/c(\d{7})(?:\.r(\d{2,})\.npz|\.npz|(\.failed))$")
MARKED = "failures-marked.json"  # written once at job creation: every chunk with failures has its .failed marker
STALE_TMP_SECONDS = 3600  # temp files older than this are left-overs of dead writers
# numpy parses each .npy header with ast.literal_eval, and CPython 3.11 keeps ast's recursion counter in state the
# threads share: chunks decoded at once in the reading threads now and then failed ("AST constructor recursion depth
# mismatch") and were called corrupt. Decoding takes this lock; the reads themselves stay parallel.
_NPY_HEADERS = threading.Lock()


class ChunkWrite(NamedTuple):
    name: str  # the chunk's name in the store, e.g. chunks/s0001/c0000042.npz
    written: bool  # False: the chunk was already there and was left as it was
    nbytes: int  # bytes written (0 when not written)


class Retry(NamedTuple):
    """Tiles of a chunk that failed transiently, to be scored into the chunk's retry layer `layer`."""
    shard: int
    index: int
    layer: int  # 1 for the chunk's first retry layer
    pos: np.ndarray  # int64 positions of the tiles in the chunk
    x: np.ndarray
    y: np.ndarray


class Scan(NamedTuple):
    """One listing of the store's chunks: done {(shard, index)}, layers {(shard, index): retry layers present},
    marked {(shard, index) with a .failed marker}."""
    done: set
    layers: dict
    marked: set


def open_store(spec, *, create=False, retries=10, timeout=60.0, concurrency=8, page_size=1000):
    """A Store for a local directory or s3://bucket/prefix.

    create=True makes the local directory and checks that it can be written (for `predict`); otherwise the
    store must exist. S3: the bucket must exist and be readable (one HEAD). retries: S3 attempts in all per
    request; page_size: keys per listing page. Bad specs, unwritable directories, missing buckets, 403s and
    missing credentials are UserErrors with one line.
    """
    spec = os.fspath(spec).strip()
    if not spec:
        raise UserError("the store is empty: give a directory or s3://bucket/prefix")
    if spec.lower().startswith("s3://"):
        bucket, _, prefix = spec[5:].partition("/")
        if not bucket:
            raise UserError(f"no bucket in {spec}; expected s3://bucket/prefix")
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        objects = S3Prefix(bucket, prefix, retries=retries, timeout=timeout, concurrency=concurrency,
                            page_size=page_size)
        try:
            objects.check()
        except BaseException:
            objects.close()
            raise
        return Store(objects.spec, objects, concurrency=concurrency)
    if "://" in spec:
        raise UserError(f"unsupported store {redact(spec)}: use a local directory or s3://bucket/prefix")
    if create:
        try:
            os.makedirs(spec, exist_ok=True)
            probe = os.path.join(spec, f".write-test-{secrets.token_hex(4)}")
            with open(probe, "wb"):
                pass
            os.remove(probe)
        except OSError as exc:
            raise UserError(f"cannot write to the store {spec}: {exc.strerror or exc}") from None
    elif not os.path.isdir(spec):
        raise UserError(f"no prediction job in {spec}: no such directory")
    return Store(spec, LocalFolder(spec), concurrency=concurrency)


class Store:
    """One prediction job's results; see the module docstring. Made by open_store()."""

    def __init__(self, spec, storage, concurrency=8):
        self.spec = spec
        self.is_s3 = spec.startswith("s3://")
        self.concurrency = max(1, int(concurrency))
        self.storage = storage  # bytes by name: a LocalFolder or an S3Prefix (storage.py)
        self._job = None
        self._cover = None
        self._plan = None
        self._committed = False
        self._marked = False  # the store's chunks with failures are known to carry markers
        self.stats = {"chunks_written": 0, "chunks_existing": 0, "bytes_written": 0}
        self._stats_lock = threading.Lock()  # workers may write chunks from several threads

    def __repr__(self):
        return f"<Store {self.spec}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.storage.close()

    # -- the job -------------------------------------------------------------------------------
    def create_job(self, job, cover, shards, chunk_size):
        """prepare_job, then commit_job: the job is in the store when this returns; returns its spec."""
        self.prepare_job(job, cover, shards, chunk_size)
        return self.commit_job()

    def prepare_job(self, job, cover, shards, chunk_size):
        """Check `job` against the job already in the store, if any (UserError when they differ), and make it this
        store's job, without writing anything: commit_job() writes it, once the run has something to store.

        job: a JSON-able dict; job["identity"] (a dict) is what must match on resume, with the plan (cover,
        shards, chunk_size). shards: [(x_start, x_end)] covering every tile (None: one shard).
        """
        if not isinstance(job, dict) or not isinstance(job.get("identity", {}), dict):
            raise ValueError("job must be a dict, and job['identity'] a dict")
        if {"format", "version", "plan"} & set(job):
            raise ValueError("job keys 'format', 'version' and 'plan' are the store's own")
        shards = check_shards(cover, shards)
        plan = ChunkPlan(cover, shards, chunk_size)
        spec = {"format": JOB_FORMAT, "version": 1, "identity": job.get("identity", {}), "plan": plan.to_dict()}
        spec.update((k, v) for k, v in job.items() if k != "identity")
        spec.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        # JSON round trip (tuples -> lists...) and redaction, so that what is compared is what is stored
        spec = json.loads(redact(json.dumps(spec, default=_jsonable)))
        existing = self._read_json("job.json")
        if existing is not None:
            self._check_same_job(existing, spec)
        self._job, self._cover, self._plan = existing or spec, cover, plan
        self._committed = existing is not None
        if self._committed:
            self.storage.remove_stale_temp(STALE_TMP_SECONDS)  # temp files of writers that died (storage.py)
        return self._job

    def commit_job(self):
        """Write the prepared job (job.json, cover.json, the failure-marker note) unless it is there; returns it."""
        if self._committed:
            return self._job
        spec, cover, plan = self._job, self._cover, self._plan
        existing = self._read_json("job.json")
        if existing is None:
            cover_data = json.dumps(cover.to_dict(plan.shards), separators=(",", ":")).encode()
            if not self.storage.write_once("cover.json", cover_data):
                other = self._load_cover()
                if cover_hash(other) != spec["plan"]["cover_sha256"]:
                    raise UserError(f"the store {self.spec} holds the tile cover of another job; use a new --out")
            self.storage.write_once(MARKED, json.dumps({"since": spec["created"]}).encode())
            self._marked = True
            if self.storage.write_once("job.json", json.dumps(spec, indent=1).encode()):
                existing = spec
            else:
                existing = self._read_json("job.json")  # another worker created it first: compare with it
        self._check_same_job(existing, spec)
        self._job, self._committed = existing, True
        return existing

    def _check_same_job(self, existing, new):
        if existing.get("format") != JOB_FORMAT:
            raise UserError(f"{self.spec}/job.json is not a prediction job; use a new --out")
        order = ["zoom", "count", "runs", "cover_sha256", "chunk_size", "shards", "chunks"]  # the telling ones first
        for part in ("identity", "plan"):
            old, cur = existing.get(part, {}), new[part]
            for key in sorted(set(old) | set(cur), key=lambda k: (order.index(k) if k in order else -1, k)):
                a, b = old.get(key), cur.get(key)
                if a != b:
                    if key == "shards" and part == "plan":  # show the X ranges, not the derived counts
                        a, b = ([[s.get("x_start"), s.get("x_end")] for s in v or []] for v in (a, b))
                    raise UserError(f"the store {self.spec} already holds a different job ({part} {key}: "
                                    f"{_short(a)} there, {_short(b)} now); use a new --out")

    def has_job(self):
        """Whether the store holds a job (job.json)."""
        return self._committed or self._read_json("job.json") is not None

    def read_job(self):
        """The job spec (job.json); UserError when the store holds no job."""
        if self._job is None:
            job = self._read_json("job.json")
            if job is None:
                raise UserError(f"no prediction job in {self.spec}")
            if job.get("format") != JOB_FORMAT:
                raise UserError(f"{self.spec}/job.json is not a tower-detector prediction job")
            self._job = job
        return self._job

    @property
    def cover(self):
        if self._cover is None:
            job = self.read_job()
            cover = self._load_cover()
            if cover_hash(cover) != job["plan"]["cover_sha256"]:
                raise UserError(f"{self.spec}/cover.json does not match job.json (the store was altered)")
            self._cover = cover
        return self._cover

    @property
    def plan(self):
        if self._plan is None:
            p = self.read_job()["plan"]
            self._plan = ChunkPlan(self.cover, [(s["x_start"], s["x_end"]) for s in p["shards"]], p["chunk_size"])
        return self._plan

    def _load_cover(self):
        data = self._read_json("cover.json")
        if not isinstance(data, dict) or data.get("format") != COVER_FORMAT:
            raise UserError(f"{self.spec}/cover.json is missing or not a tile cover")
        runs = np.asarray(data["runs"], dtype=np.int64).reshape(-1, 3)
        return TileCover(data["zoom"], runs[:, 0], runs[:, 1], runs[:, 2])

    def _read_json(self, name):
        data = self.storage.read(name)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise UserError(f"{self.spec}/{name} is not valid JSON") from None

    # -- chunks --------------------------------------------------------------------------------
    @staticmethod
    def chunk_name(shard, index, layer=0):
        """A chunk's name (layer 0), or that of its retry layer `layer`."""
        return f"chunks/s{int(shard):04d}/c{int(index):07d}" + (f".r{int(layer):02d}.npz" if layer else ".npz")

    def write_chunk(self, shard, index, x, y, score, cam_x=None, cam_y=None, errors=None):
        """Write chunk (shard, index) once and atomically; an existing chunk is left as it is.

        x, y must be exactly plan.chunk_tiles(shard, index). score: P(tower) per tile, NaN where not scored.
        cam_x, cam_y: tower position in tile pixels (0..256) or NaN; None: all NaN. errors: None, a list with an
        error or None per tile, or {position: error}; an error is a reason (a permanent failure) or a (reason,
        transient) pair; failed tiles score NaN. Caller mistakes (wrong tiles, lengths, ranges) raise ValueError.
        Returns a ChunkWrite.
        """
        want_x, want_y = self.plan.chunk_tiles(shard, index)
        return self._write_layer(shard, index, 0, None, want_x, want_y, x, y, score, cam_x, cam_y, errors)

    def write_retry(self, retry, score, cam_x=None, cam_y=None, errors=None):
        """Write the retry layer of a Retry from pending_retries(): the scores of exactly its tiles, as
        write_chunk takes them (positions in `errors` are into retry.x). Once and atomically, like a chunk."""
        xs, ys = self.plan.chunk_tiles(retry.shard, retry.index)
        pos = np.asarray(retry.pos, dtype=np.int64)
        if retry.layer < 1 or not len(pos) or pos.min() < 0 or pos.max() >= len(xs):
            raise ValueError(f"{self.chunk_name(retry.shard, retry.index, retry.layer)}: not a retry of this chunk")
        return self._write_layer(retry.shard, retry.index, retry.layer, pos, xs[pos], ys[pos], retry.x, retry.y,
                                 score, cam_x, cam_y, errors)

    def _write_layer(self, shard, index, layer, pos, want_x, want_y, x, y, score, cam_x, cam_y, errors):
        name = self.chunk_name(shard, index, layer)
        x, y = np.asarray(x).ravel(), np.asarray(y).ravel()
        if not (np.array_equal(x, want_x) and np.array_equal(y, want_y)):
            raise ValueError(f"{name}: x, y are not the plan's tiles for this chunk")
        n = len(want_x)
        score = _column(score, n, "score", name, 0.0, 1.0)
        cam_x = _column(cam_x, n, "cam_x", name, 0.0, TILE_PIXELS)
        cam_y = _column(cam_y, n, "cam_y", name, 0.0, TILE_PIXELS)
        error_index, error_reason, error_transient = _errors(errors, n, name)
        score[error_index] = np.nan
        extra = {} if pos is None else {"pos": np.asarray(pos, dtype=np.int32)}
        buf = io.BytesIO()
        np.savez_compressed(buf, x=x.astype(np.uint32), y=y.astype(np.uint32), score=score, cam_x=cam_x,
                            cam_y=cam_y, error_index=error_index, error_reason=error_reason,
                            error_transient=error_transient, **extra)
        data = buf.getvalue()
        if len(error_index) and layer == 0:
            # the marker first: a chunk with failures is never in the store without it (kill -9 in between leaves
            # a marker without its chunk, which is harmless: the chunk is missing, and is scored again)
            self.storage.write_once(self.chunk_name(shard, index)[:-4] + ".failed", b"")
        written = self.storage.write_once(name, data)
        with self._stats_lock:
            self.stats["chunks_written" if written else "chunks_existing"] += 1
            self.stats["bytes_written"] += len(data) if written else 0
        return ChunkWrite(name, written, len(data) if written else 0)

    def has_chunk(self, shard, index):
        return self.storage.exists(self.chunk_name(shard, index))

    def scan(self, shard=None):
        """One listing of the chunks (S3: paginated), never a request per chunk: a Scan."""
        prefix = "chunks/" if shard is None else f"chunks/s{int(shard):04d}/"
        done, layers, marked = set(), {}, set()
        for name in self.storage.list(prefix):
            m = _CHUNK_NAME.match(name)
            if m:
                key = (int(m[1]), int(m[2]))
                if m[4]:
                    marked.add(key)
                elif m[3]:
                    layers.setdefault(key, set()).add(int(m[3]))
                else:
                    done.add(key)
        # only layers 1, 2, ... without a gap count (each is made from the one before it)
        count = {}
        for key, present in layers.items():
            count[key] = next(k for k in range(1, len(present) + 2) if k not in present) - 1
        scan = Scan(done, {k: v for k, v in count.items() if v}, marked)
        if not self._marked:
            # a store from before the markers: mark its chunks with failures, once (a new one is marked when its
            # job is written)
            self._marked = not self.has_job() or self.storage.exists(MARKED)
            if not self._marked:
                scan = self._mark_failures(scan)
        return scan

    def _mark_failures(self, scan):
        """Mark the chunks with failures of a store written before markers existed (once; reads every chunk)."""
        for s, i, arrays in self.iter_chunks(sorted(scan.done), scan=Scan(scan.done, scan.layers, set())):
            if len(arrays["error_index"]):
                scan.marked.add((s, i))
                self._try_write_once(self.chunk_name(s, i)[:-4] + ".failed", b"")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._try_write_once(MARKED, json.dumps({"since": now}).encode())
        self._marked = True
        return scan

    def _try_write_once(self, name, data):
        try:
            self.storage.write_once(name, data)
        except Exception:  # a store we may only read: the marks hold for this run only
            pass

    def done_chunks(self, shard=None):
        """{(shard, index)} of the chunks present: one listing (S3: paginated), never a request per chunk."""
        return self.scan(shard).done

    def missing_chunks(self, shard=None, done=None):
        """The plan's chunks not yet in the store, in plan order."""
        done = self.done_chunks(shard) if done is None else done
        return [c for c in self.plan.all_chunks() if (shard is None or c[0] == shard) and c not in done]

    def read_chunk(self, shard, index, layers=None):
        """The chunk's arrays as a dict (see the module docstring), its retry layers applied (`layers` of them;
        None: as many as the store holds); UserError when missing or corrupt."""
        name = self.chunk_name(shard, index)
        data = self.storage.read(name)
        if data is None:
            raise UserError(f"chunk {name} is not in {self.spec}")
        arrays = self._decode(name, data, self.plan.chunk_len(shard, index))
        if layers is None:
            layers = self.scan(shard).layers.get((shard, index), 0)
        for layer in range(1, layers + 1):
            name = self.chunk_name(shard, index, layer)
            data = self.storage.read(name)
            if data is None:
                raise UserError(f"chunk layer {name} is not in {self.spec}")
            _apply_layer(arrays, self._decode(name, data, None), name, self.spec)
        return arrays

    def _decode(self, name, data, n):
        """A chunk's or a layer's arrays (n: the chunk's tile count; None for a layer)."""
        try:
            with _NPY_HEADERS, np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            n = len(arrays["pos"]) if n is None else n
            ok = all(len(arrays[k]) == n for k in ("x", "y", "score", "cam_x", "cam_y"))
            ok = ok and len(arrays["error_index"]) == len(arrays["error_reason"])
            if "error_transient" not in arrays:  # written before failures were told apart
                arrays["error_transient"] = np.array([transient_reason(r) for r in arrays["error_reason"].tolist()],
                                                     dtype=bool)
            ok = ok and len(arrays["error_transient"]) == len(arrays["error_index"])
        except Exception as exc:  # zipfile, numpy and key errors alike: the bytes are not a chunk we wrote
            ok, why = False, one_line(exc)
        else:
            why = "its arrays do not match its plan"
        if not ok:
            raise UserError(f"corrupt chunk {name} in {self.spec} ({why}): delete it and resume to recompute it")
        return arrays

    def pending_retries(self, shard=None, scan=None):
        """A Retry for each chunk whose tiles failed transiently and were not scored since, in plan order; reads
        only the chunks marked as holding failures."""
        scan = self.scan(shard) if scan is None else scan
        keys = sorted(k for k in scan.marked & scan.done if shard is None or k[0] == shard)
        retries = []
        for s, i, arrays in self.iter_chunks(keys, scan=scan):
            pos = arrays["error_index"][arrays["error_transient"]].astype(np.int64)
            if len(pos):
                pos.sort()
                retries.append(Retry(s, i, scan.layers.get((s, i), 0) + 1, pos, arrays["x"][pos].astype(np.int64),
                                     arrays["y"][pos].astype(np.int64)))
        return retries

    def failure_counts(self, scan=None):
        """{"permanent": n, "transient": n, "reasons": {reason: n}} over the store's chunks (reads only the chunks
        marked as holding failures)."""
        scan = self.scan() if scan is None else scan
        counts = {"permanent": 0, "transient": 0, "reasons": {}}
        for _, _, arrays in self.iter_chunks(sorted(scan.marked & scan.done), scan=scan):
            transient = int(arrays["error_transient"].sum())
            counts["transient"] += transient
            counts["permanent"] += len(arrays["error_index"]) - transient
            for reason in arrays["error_reason"].tolist():
                counts["reasons"][reason] = counts["reasons"].get(reason, 0) + 1
        return counts

    def iter_chunks(self, keys=None, concurrency=None, scan=None):
        """Yield (shard, index, arrays) for `keys` (default: every chunk present, in plan order), retry layers
        applied, reading up to `concurrency` chunks ahead in threads (S3 latency), yielding in order."""
        if scan is None:
            scan = self.scan()
        keys = sorted(scan.done) if keys is None else list(keys)
        self.plan  # noqa: B018 - load the job and cover once, before the threads
        window = deque()
        with ThreadPoolExecutor(concurrency or self.concurrency, thread_name_prefix="store") as pool:
            try:
                for key in keys:
                    window.append((key, pool.submit(self.read_chunk, *key, scan.layers.get(key, 0))))
                    if len(window) > 2 * (concurrency or self.concurrency):
                        (s, i), future = window.popleft()
                        yield s, i, future.result()
                while window:
                    (s, i), future = window.popleft()
                    yield s, i, future.result()
            finally:
                for _, future in window:
                    future.cancel()

    # -- manifest --------------------------------------------------------------------------------
    def progress(self, scan=None):
        """Where the job stands (what manifest.json holds): chunks and tiles done, failures by kind, complete.

        A tile is done once it has a score or a permanent failure: tiles that failed transiently are not, and
        the job is complete only when every tile is done. Reads only the chunks marked as holding failures."""
        plan, scan = self.plan, self.scan() if scan is None else scan
        done = scan.done
        failures = self.failure_counts(scan)
        shards = []
        for i, (a, b) in enumerate(plan.shards):
            idx = np.array(sorted(j for s, j in done if s == i), dtype=np.int64)
            shards.append({"x_start": a, "x_end": b, "chunks": plan.chunk_count(i), "done": _ranges(idx),
                           "tiles_in_done_chunks": int(sum(plan.chunk_len(i, j) for j in idx.tolist()))})
        in_chunks = sum(s["tiles_in_done_chunks"] for s in shards)
        return {"chunks_total": plan.total_chunks, "chunks_done": len(done), "tiles_total": plan.cover.count,
                "tiles_done": in_chunks - failures["transient"], "tiles_failed_permanent": failures["permanent"],
                "tiles_failed_transient": failures["transient"], "failures": failures["reasons"],
                "complete": len(done) == plan.total_chunks and not failures["transient"], "shards": shards}

    def finalize(self, extra=None, scan=None):
        """Write manifest.json (progress(), chunks done per shard as [start, end) index ranges, `extra` such as
        timings) and return it. Rewritable: call it at the end of every run."""
        manifest = {"format": MANIFEST_FORMAT, "version": 1,
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    **self.progress(scan), **(extra or {})}
        self.write_manifest(manifest)
        return manifest

    def write_manifest(self, data):
        self.storage.write("manifest.json", redact(json.dumps(data, indent=1, default=_jsonable)).encode())

    def read_manifest(self):
        return self._read_json("manifest.json")


def _column(values, n, what, name, lo, hi):
    """A float32 copy of a per-tile column (None: all NaN), checked for length and range (NaN allowed)."""
    if values is None:
        return np.full(n, np.nan, dtype=np.float32)
    out = np.array(values, dtype=np.float32).ravel()
    if len(out) != n:
        raise ValueError(f"{name}: {what} has {len(out)} values for {n} tiles")
    if ((out < lo) | (out > hi)).any():  # NaN compares False: allowed
        raise ValueError(f"{name}: {what} values must lie in {lo:g}..{hi:g} (or be NaN)")
    return out


def _errors(errors, n, name):
    """(error_index, error_reason, error_transient) arrays from write_chunk's `errors`."""
    if errors is None:
        items = []
    elif isinstance(errors, dict):
        items = sorted((int(i), r) for i, r in errors.items())
    else:
        errors = list(errors)
        if len(errors) != n:
            raise ValueError(f"{name}: errors has {len(errors)} entries for {n} tiles")
        items = [(i, r) for i, r in enumerate(errors) if r is not None]
    index = np.array([i for i, _ in items], dtype=np.int32)
    if len(index) and (index.min() < 0 or index.max() >= n or len(np.unique(index)) != len(index)):
        raise ValueError(f"{name}: error positions must be distinct and within 0..{n - 1}")
    pairs = [r if isinstance(r, tuple) else (r, False) for _, r in items]
    reasons = [redact(" ".join(str(r).split())) or "error" for r, _ in pairs]  # one line each, no secrets
    return (index, np.array(reasons, dtype=str) if reasons else np.zeros(0, dtype="<U1"),
            np.array([bool(t) for _, t in pairs], dtype=bool))


_TRANSIENT_REASON = re.compile(r"after \d+ retr(y|ies)$|^read error|^S3 |^HTTP 40[13]$")


def transient_reason(reason):
    """Whether a failure reason written before chunks recorded it (error_transient) is one worth retrying:
    what the imagery gave up on after retries, read errors, and refused credentials."""
    return bool(_TRANSIENT_REASON.search(reason))


def _apply_layer(arrays, layer, name, spec):
    """Overlay a retry layer on its chunk's arrays (in place): its tiles' scores, points and failures replace
    the chunk's."""
    pos = layer["pos"].astype(np.int64)
    inside = not len(pos) or (pos.min() >= 0 and pos.max() < len(arrays["x"]))
    if not inside or not (np.array_equal(arrays["x"][pos], layer["x"]) and
                          np.array_equal(arrays["y"][pos], layer["y"])):
        raise UserError(f"corrupt chunk layer {name} in {spec}: its tiles are not its chunk's")
    for key in ("score", "cam_x", "cam_y"):
        arrays[key][pos] = layer[key]
    keep = ~np.isin(arrays["error_index"], pos)
    moved = pos[layer["error_index"]].astype(np.int32)
    for key, extra in (("error_index", moved), ("error_reason", layer["error_reason"]),
                       ("error_transient", layer["error_transient"])):
        arrays[key] = np.concatenate([arrays[key][keep], extra]) if len(extra) else arrays[key][keep]
    order = np.argsort(arrays["error_index"], kind="stable")
    for key in ("error_index", "error_reason", "error_transient"):
        arrays[key] = arrays[key][order]


def _ranges(idx):
    """Sorted ints -> [[start, end), ...] runs."""
    if not len(idx):
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = idx[np.concatenate([[0], breaks])]
    ends = idx[np.concatenate([breaks - 1, [len(idx) - 1]])] + 1
    return np.stack([starts, ends], axis=1).tolist()


def _short(value):
    text = json.dumps(value, default=_jsonable)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)
