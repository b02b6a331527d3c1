"""`tower-detector predict`: score every tile of an area into a results store, pipelined and exactly once.

Order of work: the cover is split into shards (X-index ranges of about equal tile counts, as the original
project split countries) and each shard into chunks of --checkpoint-every tiles in a fixed order (store/plan.py).
A chunk is scored and then written once, atomically; a chunk already in the store is skipped. So a worker
killed at any moment loses at most the chunk it was scoring, a rerun scores exactly the missing chunks, and
two workers on different shards never touch the same files.

Pipeline: a feeder thread pulls tiles from the imagery source (its own pool of `workers` concurrent
fetch-and-decode threads) and stacks them into batches, at most `prefetch` batches ahead; the main thread
hands each batch to the model's streams (Classifier.submit: on a CPU, two concurrent calls of half the CPUs
each, see model.use_model_streams), keeping one more batch queued for each, while the next ones are fetched.
So when I/O keeps up, the model never waits. Chunks are written in order, once their last batch is back.

SIGTERM (a spot instance's two-minute notice, or Batch cancelling a job): the chunk being scored is
finished and written, then the CLI exits with status 143, so that a retry resumes after it.
"""

import collections
import hashlib
import json
import math
import os
import queue
import signal
import threading
import time
from typing import NamedTuple

import numpy as np

from ..common.errors import Interrupted, UserError


def parse_shard(text, n_max=100_000, name="--shard"):
    """'i/n' -> (i, n) with 0 <= i < n; None -> None (every shard, one after another)."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise UserError(f"{name} must be i/n (for example 0/8), not {text!r}") from None
    if not (n >= 1 and 0 <= i < n and n <= n_max):
        raise UserError(f"{name} {text}: need 0 <= i < n (numbered from 0)")
    return i, n


def model_calibration(model_dir):
    """The Platt calibration in the model's metrics.json (fitted on the validation split), or None for a model
    trained before calibration, or without metrics.json."""
    try:
        with open(os.path.join(model_dir, "metrics.json")) as f:
            return (json.load(f).get("validation") or {}).get("calibration")
    except (OSError, ValueError, AttributeError):
        return None


def model_fingerprint(model_dir):
    """sha256 of model.keras: a job's identity names the exact weights it was scored with."""
    digest = hashlib.sha256()
    with open(os.path.join(model_dir, "model.keras"), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def predict(opts, *, prefetch=4, progress=None, log=print, request_log=None):
    """Score the cover's tiles (this shard's, or all) into the store opts.out; returns the run's summary.

    opts: the predict stage's arguments (the CLI's parsed arguments, or pipeline.options("predict", ...)): model,
    imagery, out, area or tiles, zoom, shard, shards, workers, checkpoint_every, batch_size, max_tiles, precision
    (auto, float32 or mixed, as model.dtype_policy reads them), rate_limit (at most that many imagery requests a
    second, retries included; None: no limit), views (1, 2, 4 or 8 turned and mirrored copies of
    each tile scored and averaged) and imagery_name (the imagery's name for people, kept with the job for exports).
    Everything that can be checked is checked before TensorFlow loads. Tiles that failed transiently in an
    earlier run are scored first; one more pass at the end retries this run's transient failures. Raises
    ImageryUnreachable (exit 1) on an outage: what was scored is kept, the job is not complete. request_log: a
    sources.imagery.RequestLog to time the imagery's requests in (a pilot's figures)."""
    from ..sources.imagery import open_imagery
    from .store import open_store

    progress = progress or (lambda *a, **k: None)
    model_dir, imagery, out = opts.model, opts.imagery, opts.out
    workers, checkpoint_every, batch_size = opts.workers, opts.checkpoint_every, opts.batch_size
    precision, views, shard = opts.precision, opts.views, opts.shard
    cover, zoom, picked, part, ranges, params = check_inputs(opts)
    store = open_store(out, create=True)
    with store, open_imagery(imagery, concurrency=workers, rate_limit=opts.rate_limit,
                             request_log=request_log) as source:
        if opts.rate_limit:
            log(f"at most {opts.rate_limit:g} imagery requests a second (--rate-limit), retries included")
        # what makes two runs the same job: the exact weights, the imagery and the zoom (the plan adds the
        # cover, shards and chunk size); secrets in the imagery spec are redacted by the store
        identity = {"model_fingerprint": model_fingerprint(model_dir), "imagery": _imagery_identity(source, store),
                    "zoom": zoom}
        if views > 1:  # only then, so that stores written before views existed still resume
            identity["views"] = views
        job = {"identity": identity, "model": os.path.abspath(model_dir),
               "model_params": {k: params.get(k) for k in ("image_size", "data_fingerprint")}}
        if opts.imagery_name:
            job["imagery_name"] = opts.imagery_name
        calibration = model_calibration(model_dir)
        if calibration and views == 1:  # fitted on one view's scores; `results` turns scores into probabilities
            job["calibration"] = calibration
        elif calibration:
            log(f"the model's calibration was fitted on one view's scores: not kept for --views {views}")
        store.prepare_job(job, cover, ranges, checkpoint_every)  # written once the imagery has answered
        selected = [picked[0]] if picked else list(range(len(ranges)))

        def mine(retries):  # the retry layers of this run's chunks
            keys = set(in_part(store.plan, [(r.shard, r.index) for r in retries if r.shard in selected], part))
            return [r for r in retries if (r.shard, r.index) in keys]

        scan = store.scan()
        retries = mine(store.pending_retries(scan=scan))
        todo = in_part(store.plan, [c for s in selected for c in store.missing_chunks(s, done=scan.done)], part)
        skipped = len(in_part(store.plan, [(s, c) for s in selected for c in range(store.plan.chunk_count(s))],
                              part)) - len(todo)
        units = [_Unit(s, c, 0, None, *store.plan.chunk_tiles(s, c)) for s, c in todo]
        if retries:
            log(f"retrying {sum(len(r.pos) for r in retries):,} tiles that failed transiently before")
        if skipped:
            log(f"resuming: {skipped} chunks already in the store, {len(todo)} to score "
                f"({sum(len(u.xs) for u in units):,} tiles)")
        stats = {"chunks_written": 0, "tiles_scored": 0, "tiles_failed": 0, "tiles_failed_transient": 0,
                 "tiles_retried": 0, "bytes_written": 0, "checkpoint_seconds": 0.0, "seconds": 0.0,
                 "model_seconds": 0.0, "warm_up_seconds": 0.0}
        classifier = None
        for attempt in range(2):  # the work, then one more pass over this run's transient failures
            units = [_Unit(r.shard, r.index, r.layer, r, r.x, r.y) for r in retries] + units
            if not units:
                break
            if classifier is None:
                classifier = _classifier(model_dir, precision, views, log)
                warm_up_started = time.monotonic()
                _warm_up(classifier, min(batch_size, sum(len(u.xs) for u in units)), source.tile_size)
                stats["warm_up_seconds"] = round(time.monotonic() - warm_up_started, 2)
            if attempt:
                log(f"retrying {sum(len(u.xs) for u in units):,} tiles that failed transiently in this run")
            _run(classifier, source, store, units, zoom, batch_size, prefetch, progress, log, stats)
            scan = store.scan()
            retries = mine(store.pending_retries(scan=scan))
            units = []
        pending = sum(len(r.pos) for r in retries)
        stats.update(chunks_existing=skipped, shards=len(ranges), shard=shard, tiles_in_job=cover.count, out=out,
                     dtype_policy=classifier.policy if classifier else None,
                     model_streams=classifier.streams if classifier else None,
                     tiles_per_second=round(stats["tiles_scored"] / max(stats["seconds"], 1e-9), 1),
                     tiles_pending_retry=pending,
                     pending_reasons=_top_reasons(store, retries) if pending else {})
        if store.has_job():
            manifest = store.finalize({"last_run": {k: stats[k] for k in (
                "shard", "tiles_scored", "tiles_failed", "tiles_pending_retry", "seconds", "tiles_per_second")}},
                scan=scan)
            stats["job_complete"] = manifest["complete"]
        else:
            stats["job_complete"] = False
        return stats


def check_inputs(opts):
    """Every check of predict's arguments that needs no TensorFlow (UserError, one line); returns (cover, zoom,
    picked shard or None, part or None, shard ranges, model params). Runs before any work, and in the parent of
    a --processes/--gpus run before any child starts."""
    from ..geo.areas import load_area
    from ..geo.cover import TileCover, tile_cover
    from ..training.model import PRECISIONS, VIEWS, read_params

    model_dir, area, tiles, zoom = opts.model, opts.area, opts.tiles, opts.zoom
    if (area is None) == (tiles is None):
        raise UserError("predict needs --area or --tiles (one of them)")
    if opts.checkpoint_every < 1 or opts.batch_size < 1 or opts.workers < 1:
        raise UserError("--checkpoint-every, --batch-size and --workers must be at least 1")
    if opts.views not in VIEWS or opts.precision not in PRECISIONS:
        raise UserError(f"--views must be one of {VIEWS} and --precision one of {PRECISIONS}")
    check_rate_limit(opts.rate_limit, opts.imagery)
    if getattr(opts, "processes", 1) > 1 and getattr(opts, "gpus", None):
        raise UserError("give --processes (CPU only) or --gpus (one process per GPU), not both")
    picked = parse_shard(opts.shard)
    part = parse_shard(getattr(opts, "part", None), name="--part")
    params = read_params(model_dir)
    if not os.path.isfile(os.path.join(model_dir, "model.keras")):
        raise UserError(f"{model_dir} has params.json but no model.keras")
    if tiles is not None:
        cover = TileCover.load(tiles)
        zoom = cover.zoom
    else:
        cover = tile_cover(load_area(area), zoom)
    if cover.count == 0:
        raise UserError("the area or tile list holds no tiles")
    if cover.count > opts.max_tiles:
        raise UserError(f"{cover.count:,} tiles is over --max-tiles {opts.max_tiles:,}")
    n_shards = picked[1] if picked else (opts.shards or 1)
    if n_shards > len(cover.x):
        raise UserError(f"{n_shards} shards for {len(cover.x)} tile columns: shards are column ranges; use fewer")
    return cover, zoom, picked, part, cover.shard_ranges(n_shards), params


def check_rate_limit(rate, imagery):
    """--rate-limit: a positive number of requests a second, for imagery that makes requests one a tile (an XYZ
    template); UserError otherwise. The CLI's type checks the number already; this is for library callers."""
    from ..sources.imagery import is_tile_template

    if rate is None:
        return
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise UserError(f"--rate-limit must be a positive number of requests per second, not {rate!r}")
    if not is_tile_template(imagery):
        raise UserError("--rate-limit limits the requests to an XYZ tile server (an http(s) URL template with "
                        "{z}/{x}/{y}); other imagery makes no such requests: leave it out")


def in_part(plan, chunks, part):
    """The chunks [(shard, index)] that are part i of n (None: all): chunk k of the plan, counted over every
    shard in order, is part k % n, so the parts of a run are about equal, whatever its shards."""
    if part is None:
        return list(chunks)
    first = np.cumsum([0] + [plan.chunk_count(s) for s in range(len(plan.shards))])
    i, n = part
    return [(s, c) for s, c in chunks if (first[s] + c) % n == i]


class _Unit(NamedTuple):
    """Work for the pipeline: a chunk (layer 0) or a chunk's retry layer, and its tiles."""
    shard: int
    chunk: int
    layer: int
    retry: object  # the store's Retry for a layer, else None
    xs: np.ndarray
    ys: np.ndarray


def _classifier(model_dir, precision, views, log):
    """The model, loaded (TensorFlow starts here), in this process's model streams."""
    from ..training.model import Classifier, use_model_streams, warn_if_slow_precision

    use_model_streams()
    classifier = Classifier(model_dir, precision, views)
    log(f"scoring with {model_dir} in {classifier.policy}" + (f", {views} views a tile" if views > 1 else ""))
    warn_if_slow_precision(classifier.policy, log)
    return classifier


def _imagery_identity(source, store):
    """The imagery as the job's identity names it: a local path made absolute, so that a resume with another
    spelling of the same file is the same job (a job written with a relative path still matches it)."""
    spec = source.description
    if "://" in spec or spec.startswith("/vsi") or "${" in spec:
        return spec
    spec = os.path.abspath(spec)
    try:
        old = store.read_job()["identity"].get("imagery")
    except UserError:
        return spec
    return old if isinstance(old, str) and os.path.abspath(old) == spec else spec


def _top_reasons(store, retries, n=3):
    reasons = collections.Counter()
    for r in retries:
        arrays = store.read_chunk(r.shard, r.index)
        reasons.update(arrays["error_reason"][arrays["error_transient"]].tolist())
    return dict(reasons.most_common(n))


def _warm_up(classifier, batch_size, tile_size):
    """Trace the model before the clock starts; a batch too big for the GPU's memory fails here, before any work."""
    import tensorflow as tf

    try:
        classifier.warm_up(batch_size, tile_size)
    except tf.errors.ResourceExhaustedError:
        views = f" ({classifier.views} views each)" if classifier.views > 1 else ""
        raise UserError(f"out of memory scoring a batch of {batch_size} tiles{views}: try --batch-size "
                        f"{max(batch_size // 2, 1)}") from None


def _run(classifier, source, store, units, zoom, batch_size, prefetch, progress, log, stats):
    """Score `units` through the pipeline, writing each once its last batch is back; adds to `stats`."""
    from ..sources.imagery import ImageryUnreachable

    stop = threading.Event()
    previous = _on_sigterm(lambda: (stop.set(), log("SIGTERM: finishing the current chunk, then stopping")))
    feed = _Feeder(source, units, zoom, batch_size, prefetch)
    total_tiles = sum(len(u.xs) for u in units)
    started = time.monotonic()
    scored, model_seconds = 0, classifier.model_seconds
    # batches handed to the model, oldest first: (chunk, offset, n, ok, future), at most two per stream (one it
    # scores, one queued, so a stream never waits for the main thread); a chunk is written, in order, once its
    # last batch is back
    in_model, depth = collections.deque(), 2 * classifier.streams
    open_chunks = collections.deque()

    def collect(keep):
        nonlocal scored
        while len(in_model) > keep:
            chunk, offset, n, ok, future = in_model.popleft()
            if future is not None:
                p, pts = future.result()
                idx = offset + np.flatnonzero(ok)
                chunk.score[idx], chunk.cam[idx] = p, pts
            chunk.waiting -= 1
            scored += n
            progress(scored, total_tiles, stage="tiles", shard=chunk.unit.shard, chunk=chunk.unit.chunk)
            while open_chunks and open_chunks[0].complete and open_chunks[0].waiting == 0:
                write(open_chunks.popleft())

    def write(chunk):
        unit, n = chunk.unit, len(chunk.unit.xs)
        transient = sum(1 for _, t in chunk.errors.values() if t)
        if transient == n:
            if unit.retry is not None:
                return  # every tile of the retry failed again: nothing new to record, they stay pending
            # the whole chunk failed transiently: an outage, not tiles to record
            reason = collections.Counter(r for r, _ in chunk.errors.values()).most_common(1)[0][0]
            raise ImageryUnreachable(f"imagery unreachable: {n} of the last {n} tiles failed: {reason}; run the "
                                     "same command again to resume")
        t = time.monotonic()
        store.commit_job()  # the imagery has answered: the job is written with the first chunk
        columns = dict(cam_x=np.clip(chunk.cam[:, 0], 0, 256), cam_y=np.clip(chunk.cam[:, 1], 0, 256),
                       errors=chunk.errors)
        if unit.retry is None:
            written = store.write_chunk(unit.shard, unit.chunk, unit.xs, unit.ys, np.clip(chunk.score, 0, 1),
                                        **columns)
        else:
            written = store.write_retry(unit.retry, np.clip(chunk.score, 0, 1), **columns)
            stats["tiles_retried"] += n
        stats["checkpoint_seconds"] += time.monotonic() - t
        stats["chunks_written"] += int(written.written and unit.retry is None)
        stats["bytes_written"] += written.nbytes
        stats["tiles_failed"] += len(chunk.errors) - transient
        stats["tiles_failed_transient"] += transient
        stats["tiles_scored"] += n - len(chunk.errors)
        if stop.is_set():
            raise _Stopped()

    try:
        try:
            for unit, batches in feed.chunks():
                chunk = _Chunk(unit)
                open_chunks.append(chunk)
                for offset, images, ok, errors in batches:
                    chunk.errors.update((offset + i, e) for i, e in enumerate(errors) if e is not None)
                    collect(depth - 1)  # room for this batch
                    future = classifier.submit(images[ok]) if ok.any() else None
                    in_model.append((chunk, offset, len(images), ok, future))
                    chunk.waiting += 1
                chunk.complete = True
                collect(depth - 1)
            collect(0)
        except ImageryUnreachable:
            collect(0)  # the chunks whose tiles were all fetched are written; the one under way is not
            raise
    except _Stopped:
        raise Interrupted(f"stopped on SIGTERM after writing {stats['chunks_written']} chunks; run the same "
                          "command again to resume") from None
    finally:
        feed.close()
        signal.signal(signal.SIGTERM, previous) if previous is not None else None
        stats["seconds"] = round(stats["seconds"] + time.monotonic() - started, 2)
        stats["model_seconds"] = round(stats["model_seconds"] + classifier.model_seconds - model_seconds, 2)
        stats["checkpoint_seconds"] = round(stats["checkpoint_seconds"], 3)


class _Chunk:
    """One unit's scores as its batches come back from the model."""

    def __init__(self, unit):
        self.unit = unit
        self.score = np.full(len(unit.xs), np.nan, np.float32)
        self.cam = np.full((len(unit.xs), 2), np.nan, np.float32)
        self.errors = {}  # position -> (reason, transient)
        self.waiting = 0  # batches in the model
        self.complete = False  # every batch handed to the model


class _Stopped(Exception):
    pass


def _on_sigterm(callback):
    """Install a SIGTERM handler (main thread only); returns the previous one, or None when not possible."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda signum, frame: callback())


class _Feeder:
    """Fetches the chunks' tiles in a background thread, as batches: (offset, images, ok mask, reasons)."""

    _END = object()

    def __init__(self, source, units, zoom, batch_size, prefetch):
        self.source, self.units, self.zoom, self.batch_size = source, units, zoom, batch_size
        self.queue = queue.Queue(maxsize=max(prefetch, 1))
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._work, name="tile-feeder", daemon=True)
        self.thread.start()

    def _put(self, item):
        while not self.closed.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _work(self):
        try:
            # one continuous stream over every chunk, so fetching never pauses at a chunk boundary
            def all_tiles():
                for unit in self.units:
                    yield from zip(unit.xs.tolist(), unit.ys.tolist(), [self.zoom] * len(unit.xs))

            results = self.source.fetch(all_tiles())
            for unit in self.units:
                if not self._put(("chunk", unit)):
                    return
                xs = unit.xs
                for offset in range(0, len(xs), self.batch_size):
                    n = min(self.batch_size, len(xs) - offset)
                    images, ok, errors = None, np.zeros(n, bool), [None] * n
                    for i in range(n):
                        r = next(results)
                        if r.error is None:
                            if images is None:
                                images = np.zeros((n, *r.image.shape), np.uint8)
                            images[i], ok[i] = r.image, True
                        else:
                            errors[i] = (r.error, r.transient)
                    if images is None:
                        images = np.zeros((n, 256, 256, 3), np.uint8)
                    if not self._put(("batch", (offset, images, ok, errors))):
                        return
            self._put((self._END, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(("error", exc))

    def chunks(self):
        """Yields (unit, batches iterator) in order; the batches must be consumed in turn."""
        pending = None
        while True:
            kind, value = pending or self.queue.get()
            pending = None
            if kind is self._END:
                return
            if kind == "error":
                raise value
            header = value

            def batches():
                nonlocal pending
                while True:
                    k, v = self.queue.get()
                    if k == "batch":
                        yield v
                    elif k == "error":
                        raise v
                    else:
                        pending = (k, v)
                        return

            yield header, batches()

    def close(self):
        self.closed.set()
