"""`tower-detector predict`: score every tile of an area into a results store, pipelined and exactly once.

Order of work: the cover is split into shards (X-index ranges of about equal tile counts, as the original
project split countries) and each shard into chunks of --checkpoint-every tiles in a fixed order (store.py).
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
import os
import queue
import signal
import threading
import time

import numpy as np

from .events import Interrupted, UserError


def parse_shard(text, n_max=100_000):
    """'i/n' -> (i, n) with 0 <= i < n; None -> None (every shard, one after another)."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise UserError(f"--shard must be i/n (for example 0/8), not {text!r}") from None
    if not (n >= 1 and 0 <= i < n and n <= n_max):
        raise UserError(f"--shard {text}: need 0 <= i < n (shards are numbered from 0)")
    return i, n


def model_fingerprint(model_dir):
    """sha256 of model.keras: a job's identity names the exact weights it was scored with."""
    digest = hashlib.sha256()
    with open(os.path.join(model_dir, "model.keras"), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def predict(model_dir, imagery, out, *, area=None, tiles=None, zoom=18, shard=None, shards=None, workers=16,
            checkpoint_every=5000, batch_size=64, prefetch=4, max_tiles=100_000_000, precision="auto", views=1,
            progress=None, log=print):
    """Score the cover's tiles (this shard's, or all) into the store `out`; returns the run's summary.

    precision: auto, float32 or mixed, as model.dtype_policy reads them (auto: bfloat16 on a CPU with it native).
    views: 1, 2, 4 or 8 turned and mirrored copies of each tile scored and averaged (Classifier)."""
    from .areas import load_area
    from .cover import TileCover, tile_cover
    from .imagery import open_imagery
    from .model import Classifier, warn_if_slow_precision
    from .store import open_store

    progress = progress or (lambda *a, **k: None)
    if (area is None) == (tiles is None):
        raise UserError("predict needs --area or --tiles (one of them)")
    if checkpoint_every < 1 or batch_size < 1 or workers < 1:
        raise UserError("--checkpoint-every, --batch-size and --workers must be at least 1")
    picked = parse_shard(shard)
    classifier = Classifier(model_dir, precision, views)  # a missing or incompatible model fails before any work
    log(f"scoring with {model_dir} in {classifier.policy}" + (f", {views} views a tile" if views > 1 else ""))
    warn_if_slow_precision(classifier.policy, log)
    if tiles is not None:
        cover = TileCover.load(tiles)
        zoom = cover.zoom
    else:
        cover = tile_cover(load_area(area), zoom)
    if cover.count == 0:
        raise UserError("the area or tile list holds no tiles")
    if cover.count > max_tiles:
        raise UserError(f"{cover.count:,} tiles is over --max-tiles {max_tiles:,}")
    n_shards = picked[1] if picked else (shards or 1)
    if n_shards > len(cover.x):
        raise UserError(f"{n_shards} shards for {len(cover.x)} tile columns: shards are column ranges; use fewer")
    ranges = cover.shard_ranges(n_shards)
    store = open_store(out, create=True)
    with store, open_imagery(imagery, concurrency=workers) as source:
        # what makes two runs the same job: the exact weights, the imagery and the zoom (the plan adds the
        # cover, shards and chunk size); secrets in the imagery spec are redacted by the store
        identity = {"model_fingerprint": model_fingerprint(model_dir), "imagery": source.description, "zoom": zoom}
        if views > 1:  # only then, so that stores written before views existed still resume
            identity["views"] = views
        store.create_job({"identity": identity, "model": os.path.abspath(model_dir),
                          "model_params": {k: classifier.params.get(k) for k in ("image_size", "data_fingerprint")}},
                         cover, ranges, checkpoint_every)
        selected = [picked[0]] if picked else list(range(len(ranges)))
        done = store.done_chunks()
        todo = [c for s in selected for c in store.missing_chunks(s, done=done)]
        total_tiles = sum(store.plan.chunk_len(s, c) for s, c in todo)
        skipped = sum(store.plan.chunk_count(s) for s in selected) - len(todo)
        if skipped:
            log(f"resuming: {skipped} chunks already in the store, {len(todo)} to score ({total_tiles:,} tiles)")
        warm_up_started = time.monotonic()
        if todo:
            _warm_up(classifier, min(batch_size, total_tiles), source.tile_size)
        warm_up_seconds = time.monotonic() - warm_up_started
        stats = _run(classifier, source, store, todo, total_tiles, zoom, batch_size, prefetch, progress, log)
        stats.update(chunks_existing=skipped, shards=len(ranges), shard=shard, tiles_in_job=cover.count, out=out,
                     dtype_policy=classifier.policy, model_streams=classifier.streams,
                     warm_up_seconds=round(warm_up_seconds, 2))
        manifest = store.finalize({"last_run": {k: stats[k] for k in ("shard", "tiles_scored", "tiles_failed",
                                                                       "seconds", "tiles_per_second")}})
        stats["job_complete"] = manifest["complete"]
        return stats


def _warm_up(classifier, batch_size, tile_size):
    """Trace the model before the clock starts; a batch too big for the GPU's memory fails here, before any work."""
    import tensorflow as tf

    try:
        classifier.warm_up(batch_size, tile_size)
    except tf.errors.ResourceExhaustedError:
        views = f" ({classifier.views} views each)" if classifier.views > 1 else ""
        raise UserError(f"out of memory scoring a batch of {batch_size} tiles{views}: try --batch-size "
                        f"{max(batch_size // 2, 1)}") from None


def _run(classifier, source, store, todo, total_tiles, zoom, batch_size, prefetch, progress, log):
    stop = threading.Event()
    previous = _on_sigterm(lambda: (stop.set(), log("SIGTERM: finishing the current chunk, then stopping")))
    feed = _Feeder(source, [(s, c, *store.plan.chunk_tiles(s, c)) for s, c in todo], zoom, batch_size, prefetch)
    started = time.monotonic()
    stats = {"chunks_written": 0, "tiles_scored": 0, "tiles_failed": 0, "bytes_written": 0, "checkpoint_seconds": 0.0}
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
            progress(scored, total_tiles, stage="tiles", shard=chunk.shard, chunk=chunk.chunk)
            while open_chunks and open_chunks[0].complete and open_chunks[0].waiting == 0:
                write(open_chunks.popleft())

    def write(chunk):
        t = time.monotonic()
        written = store.write_chunk(chunk.shard, chunk.chunk, chunk.xs, chunk.ys, np.clip(chunk.score, 0, 1),
                                    cam_x=np.clip(chunk.cam[:, 0], 0, 256), cam_y=np.clip(chunk.cam[:, 1], 0, 256),
                                    errors=chunk.errors)
        stats["checkpoint_seconds"] += time.monotonic() - t
        stats["chunks_written"] += int(written.written)
        stats["bytes_written"] += written.nbytes
        stats["tiles_failed"] += len(chunk.errors)
        stats["tiles_scored"] += len(chunk.xs) - len(chunk.errors)
        if stop.is_set():
            raise _Stopped()

    try:
        for (s, c, xs, ys), batches in feed.chunks():
            chunk = _Chunk(s, c, xs, ys)
            open_chunks.append(chunk)
            for offset, images, ok, reasons in batches:
                chunk.errors.update((offset + i, r) for i, r in enumerate(reasons) if r is not None)
                collect(depth - 1)  # room for this batch
                future = classifier.submit(images[ok]) if ok.any() else None
                in_model.append((chunk, offset, len(images), ok, future))
                chunk.waiting += 1
            chunk.complete = True
            collect(depth - 1)
        collect(0)
    except _Stopped:
        raise Interrupted(f"stopped on SIGTERM after writing {stats['chunks_written']} chunks; run the same "
                          "command again to resume") from None
    finally:
        feed.close()
        signal.signal(signal.SIGTERM, previous) if previous is not None else None
    seconds = time.monotonic() - started
    stats.update(seconds=round(seconds, 2), tiles_per_second=round(stats["tiles_scored"] / max(seconds, 1e-9), 1),
                 model_seconds=round(classifier.model_seconds - model_seconds, 2),
                 checkpoint_seconds=round(stats["checkpoint_seconds"], 3), chunks_todo=len(todo))
    return stats


class _Chunk:
    """One chunk's scores as its batches come back from the model."""

    def __init__(self, shard, chunk, xs, ys):
        self.shard, self.chunk, self.xs, self.ys = shard, chunk, xs, ys
        self.score = np.full(len(xs), np.nan, np.float32)
        self.cam = np.full((len(xs), 2), np.nan, np.float32)
        self.errors = {}
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

    def __init__(self, source, chunks, zoom, batch_size, prefetch):
        self.source, self.chunks_todo, self.zoom, self.batch_size = source, chunks, zoom, batch_size
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
                for _, _, xs, ys in self.chunks_todo:
                    yield from zip(xs.tolist(), ys.tolist(), [self.zoom] * len(xs))

            results = self.source.fetch(all_tiles())
            for s, c, xs, ys in self.chunks_todo:
                if not self._put(("chunk", (s, c, xs, ys))):
                    return
                for offset in range(0, len(xs), self.batch_size):
                    n = min(self.batch_size, len(xs) - offset)
                    images, ok, reasons = None, np.zeros(n, bool), [None] * n
                    for i in range(n):
                        r = next(results)
                        if r.error is None:
                            if images is None:
                                images = np.zeros((n, *r.image.shape), np.uint8)
                            images[i], ok[i] = r.image, True
                        else:
                            reasons[i] = r.error
                    if images is None:
                        images = np.zeros((n, 256, 256, 3), np.uint8)
                    if not self._put(("batch", (offset, images, ok, reasons))):
                        return
            self._put((self._END, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(("error", exc))

    def chunks(self):
        """Yields ((shard, chunk, xs, ys), batches iterator) in order; the batches must be consumed in turn."""
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
