"""The results store of a prediction job: a local directory or s3://bucket/prefix, with one layout (store.py), the
plan that fixes which tiles each chunk holds (plan.py), and the storage of bytes by name underneath (storage.py).

    store = open_store("s3://bucket/zambia", create=True)        # or a local directory
    store.prepare_job({"identity": {...}, "model": path}, cover, shards, chunk_size=5000)
    ...
    store.write_chunk(shard, index, xs, ys, scores, cam_x, cam_y, errors)
"""

from .plan import ChunkPlan, check_shards, chunk_count, chunk_tiles, cover_hash
from .store import JOB_FORMAT, MANIFEST_FORMAT, ChunkWrite, Retry, Scan, Store, open_store, transient_reason

__all__ = ["JOB_FORMAT", "MANIFEST_FORMAT", "ChunkPlan", "ChunkWrite", "Retry", "Scan", "Store", "check_shards",
           "chunk_count", "chunk_tiles", "cover_hash", "open_store", "transient_reason"]
