"""The pilot: `remote submit predict ... --pilot N` scores N tiles of the area on one GPU worker and measures what
the estimate of the full run needs; `--from-pilot NAME` then takes its rate instead of the assumed one.

    sample_cover(cover, n)        n tiles spread evenly over the cover (every count/n-th tile in cover order, so
                                  every part of the area, not its first corner, which can be sea)
    run_pilot(...)                the worker side (`remote worker --pilot s3://.../pilot.json predict ...`): scores
                                  the sample into the pilot's own store, then writes pilot.json next to it
    read_pilot(aws, bucket, name) a finished pilot's pilot.json, from s3://BUCKET/jobs/NAME/pilot.json
    check_same_run(...)           a full run whose model, zoom, imagery or precision differ from the pilot's is
                                  refused: the rate would not be its rate
    GpuSampler                    GPU utilisation from nvidia-smi, sampled in a thread while tiles are scored

pilot.json (FORMAT): the tiles handled and the seconds the scoring took (model load and warm-up not counted: the
estimate adds a start-up per shard), tiles/s and tiles/s per view, the worker's start-up seconds, the imagery's
requests (latency median and p95, transient and permanent failure rates; XYZ imagery only), GPU utilisation (or
null and why), and what was run: the model (its S3 URI and the sha256 of model.keras), the imagery spec as written
(${NAME} references unexpanded), the zoom, views, precision, batch size and workers.
"""

import json
import os
import shutil
import statistics
import subprocess
import threading
import time

import numpy as np

from ..common.errors import Failure, UserError
from ..common.redaction import redact

FORMAT = "tower-detector/pilot"
GPU_QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
GPU_NAME_QUERY = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]


def sample_cover(cover, n):
    """n tiles of the cover spread evenly over it: tile floor((i + 0.5) x count / n) of the cover's order for i < n
    (the whole cover when n >= its count), as a TileCover of one-tile runs."""
    from ..geo.cover import TileCover

    count = cover.count
    if n >= count:
        return cover
    picks = ((np.arange(n) + 0.5) * count / n).astype(np.int64)
    lengths = cover.y1 - cover.y0
    ends = np.cumsum(lengths)
    run = np.searchsorted(ends, picks, side="right")
    x = cover.x[run]
    y = cover.y0[run] + picks - (ends[run] - lengths[run])
    return TileCover(cover.zoom, x, y, y + 1)


class GpuSampler:
    """GPU utilisation (%), from nvidia-smi every `interval` seconds in a thread, between start() and stop(). A
    machine without nvidia-smi (CI, a CPU worker) gives null and the reason "no nvidia-smi"."""

    def __init__(self, interval=1.0, query=None, name_query=None):
        self.interval = interval
        self.query, self.name_query = query or GPU_QUERY, name_query or GPU_NAME_QUERY
        self.samples, self.name, self.reason = [], None, None
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        if shutil.which(self.query[0]) is None:
            self.reason = f"no {self.query[0]}"
            return
        self.name = self._ask(self.name_query)
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
        self._thread.start()

    def _ask(self, command):
        try:
            answer = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            self.reason = f"{command[0]} failed: {type(exc).__name__}"
            return None
        if answer.returncode != 0:
            self.reason = f"{command[0]} failed: {' '.join((answer.stderr or answer.stdout).split())[:200]}"
            return None
        return answer.stdout.strip().splitlines()[0].strip() if answer.stdout.strip() else None

    def _run(self):
        while True:
            answer = None
            try:
                answer = subprocess.run(self.query, capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.SubprocessError) as exc:
                self.reason = f"{self.query[0]} failed: {type(exc).__name__}"
            if answer is not None and answer.returncode == 0:
                values = [float(v) for v in answer.stdout.split() if v.replace(".", "", 1).isdigit()]
                if values:  # a worker sees its own GPU; with several, their mean
                    self.samples.append(sum(values) / len(values))
            if self._stop.wait(self.interval):
                return

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def summary(self):
        if not self.samples:
            return {"utilisation_percent": None, "reason": self.reason or "no sample taken (the run was shorter "
                    "than one sample)", "name": self.name}
        return {"utilisation_percent": round(statistics.fmean(self.samples), 1),
                "median_percent": round(statistics.median(self.samples), 1), "min_percent": min(self.samples),
                "max_percent": max(self.samples), "samples": len(self.samples), "interval_s": self.interval,
                "name": self.name}


# ---------------------------------------------------------------------------------------------
# the worker side
# ---------------------------------------------------------------------------------------------
def run_pilot(args, rep, report_uri, s3, *, model_uri, started):
    """Score the pilot's tiles (args: predict's, inputs fetched; one shard) into its store and write pilot.json
    to report_uri. model_uri: the model as the command named it; started: time.monotonic() at the worker's start.
    Tiles that failed transiently are figures here, not a reason to retry: the pilot ends with exit 0. An
    imagery outage ends it with exit 1 (not retried), after pilot.json says so."""
    from ..geo.cover import TileCover
    from ..prediction.predict import model_fingerprint, predict
    from ..sources.imagery import ImageryUnreachable, RequestLog
    from .transfer import parse_s3

    bucket, key = parse_s3(report_uri)
    requests, gpu = RequestLog(), GpuSampler()
    first = []

    def progress(*a, **k):
        if not first:  # the first batch is back: sample the GPU while tiles are scored, not while the model loads
            first.append(time.monotonic())
            gpu.start()
        rep.progress(*a, **k)

    args.shard = None  # one job, one shard
    what = {"model": model_uri, "model_fingerprint": model_fingerprint(args.model), "imagery": args.imagery,
            "imagery_name": args.imagery_name, "zoom": TileCover.load(args.tiles).zoom if args.tiles else args.zoom,
            "views": args.views, "precision": args.precision, "batch_size": args.batch_size, "workers": args.workers}
    failure, stats = None, None
    try:
        stats = predict(args, progress=progress, log=rep.log, request_log=requests)
    except ImageryUnreachable as exc:
        failure = str(exc)
    finally:
        gpu.stop()
    figures = pilot_figures(stats, requests.summary(), gpu.summary(), what,
                            startup_seconds=(first[0] - started) if first else None, failure=failure)
    body = redact(json.dumps(figures, indent=1))  # the spec keeps ${NAME}; this is a last check
    s3.put_object(Bucket=bucket, Key=key, Body=body.encode(), ContentType="application/json")
    rep.log(f"pilot figures written to {report_uri}")
    if failure:
        raise Failure(f"pilot: {failure} (figures so far in {report_uri})")
    rep.result(pilot_text(figures), **figures)
    return figures


def pilot_figures(stats, requests, gpu, what, *, startup_seconds, failure=None):
    """pilot.json's content from predict's summary (None after an outage), the request log's and the GPU
    sampler's summaries, and what was run."""
    stats = stats or {}
    tiles = sum(stats.get(k, 0) for k in ("tiles_scored", "tiles_failed", "tiles_pending_retry"))
    seconds = stats.get("seconds") or 0.0
    rate = tiles / seconds if tiles and seconds > 0 else None
    views = what.get("views") or 1
    if not requests["requests"]:
        requests = dict(requests, reason="only XYZ imagery's requests are timed")
    return {"format": FORMAT, "version": 1, "job": os.environ.get("TOWER_DETECTOR_JOB"),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "failure": failure,
            "tiles": tiles, "tiles_scored": stats.get("tiles_scored", 0),
            "tiles_failed_permanent": stats.get("tiles_failed", 0),
            "tiles_failed_transient": stats.get("tiles_pending_retry", 0),
            "seconds": seconds, "startup_seconds": round(startup_seconds, 2) if startup_seconds is not None else None,
            "tiles_per_second": round(rate, 2) if rate else None,
            "tiles_per_second_per_view": round(rate * views, 2) if rate else None,
            "dtype_policy": stats.get("dtype_policy"), "imagery_requests": requests, "gpu": gpu, **what}


def pilot_text(p):
    """What a pilot measured, in a few lines."""
    r, g = p["imagery_requests"], p["gpu"]
    rate = "no rate (nothing was scored)"
    if p["tiles_per_second"]:
        rate = f"{p['tiles_per_second']:g} tiles/s"
        if p["views"] > 1:
            rate += f" at {p['views']} views a tile ({p['tiles_per_second_per_view']:g} tiles/s a view)"
    lines = [f"pilot: {p['tiles']:,} tiles ({p['tiles_scored']:,} scored, {p['tiles_failed_permanent']:,} without "
             f"imagery or unreadable, {p['tiles_failed_transient']:,} failed transiently) in {p['seconds']:,.1f} s: "
             + rate + (f"; the worker took {p['startup_seconds']:,.0f} s to start (inputs, model, warm-up)"
                       if p.get("startup_seconds") is not None else "")]
    if r["requests"]:
        lines.append(f"  imagery: {r['requests']:,} requests, latency median {r['latency_median_s'] * 1000:,.0f} ms, "
                     f"p95 {r['latency_p95_s'] * 1000:,.0f} ms; failed: {r['error_rate_transient']:.1%} transiently "
                     f"(retried), {r['error_rate_permanent']:.1%} for good ({r['no_imagery']:,} no imagery there)")
    else:
        lines.append(f"  imagery: latency not measured ({r.get('reason', 'no request')})")
    lines.append(f"  GPU: {g['utilisation_percent']:g} % busy on average (median {g['median_percent']:g} %, "
                 f"{g['samples']} samples)" + (f", {g['name']}" if g.get("name") else "")
                 if g["utilisation_percent"] is not None else f"  GPU: utilisation not measured ({g['reason']})")
    if p.get("failure"):
        lines.append(f"  stopped early: {p['failure']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the submitting side
# ---------------------------------------------------------------------------------------------
def report_key(name):
    return f"jobs/{name}/pilot.json"


def read_pilot(aws, bucket, name):
    """A finished pilot's figures (pilot.json in the stack's bucket), or None when it has not written them yet."""
    from .transfer import read_json

    figures = read_json(aws, bucket, report_key(name))
    if figures is None:
        return None
    if not isinstance(figures, dict) or figures.get("format") != FORMAT:
        raise UserError(f"s3://{bucket}/{report_key(name)} is not a pilot's pilot.json")
    return figures


def usable_pilot(aws, bucket, name):
    """The figures of pilot `name` for --from-pilot; UserError when it has none, or none worth using."""
    figures = read_pilot(aws, bucket, name)
    where = f"s3://{bucket}/{report_key(name)}"
    if figures is None:
        raise UserError(f"--from-pilot {name}: no {where}: the pilot has not finished (see `tower-detector remote "
                        f"status {name}`), or it is no pilot of this stack")
    if figures.get("failure"):
        raise UserError(f"--from-pilot {name}: the pilot stopped early ({figures['failure']}): run another")
    if not figures.get("tiles_per_second_per_view"):
        raise UserError(f"--from-pilot {name}: the pilot scored no tile, so it measured no rate: run another")
    return figures


def check_same_run(figures, name, *, model, zoom, imagery, precision):
    """UserError (one line) when the full run is not what the pilot measured: another model, zoom, imagery or
    precision. model: an s3:// URI (compared with the pilot's) or a local model folder (its model.keras's sha256
    compared with the pilot's)."""
    from ..prediction.predict import model_fingerprint

    if str(model).lower().startswith("s3://"):
        same_model = model == figures.get("model")
    else:
        same_model = model_fingerprint(model) == figures.get("model_fingerprint")
    differ = [what for what, same in (
        (f"another model ({figures.get('model')})", same_model),
        (f"zoom {figures.get('zoom')}, not {zoom}", figures.get("zoom") == zoom),
        (f"another imagery ({redact(str(figures.get('imagery')))})", figures.get("imagery") == imagery),
        (f"precision {figures.get('precision')}, not {precision}", figures.get("precision") == precision))
        if not same]
    if differ:
        raise UserError(f"--from-pilot {name}: the pilot measured another run ({'; '.join(differ)}); run a pilot of "
                        "this model, zoom, imagery and precision")


def rate_source(figures, name):
    """How the estimate names a pilot's rate."""
    return {"kind": "pilot", "pilot": name, "tiles": figures["tiles"], "gpu": (figures.get("gpu") or {}).get("name")}
