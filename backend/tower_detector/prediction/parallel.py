"""`predict --processes N` and `--gpus N`: N child processes on this machine score one store together.

Child i of n runs the same predict command with `--part i/n --events`: it scores chunk k of the plan (counted
over every shard in order) when k % n == i, so the parts are about equal and no two children touch the same
chunk; the store's chunks are written once, atomically (store/), so a rerun of the same command resumes exactly,
whichever children finished. One process fetches and decodes only as fast as one CPU runs Python (the GIL), so
on a CPU machine N processes share the CPUs out (each pinned to its share of them); with --gpus each child sees
one GPU (CUDA_VISIBLE_DEVICES) and its share of the CPUs to feed it.

The parent merges the children's JSON-lines events: one progress report (tiles done and total over every child,
tiles/s), their log lines prefixed with the child, and one summary. SIGTERM to the parent is passed on to every
child, which finishes its chunk and stops (exit 143, as predict alone). Exit: the first bad input of a child
(exit 2), else a failure (exit 1, run the same command again to resume) if any child failed or was killed, else
143 when stopped by SIGTERM.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

from ..common.errors import Failure, Interrupted, UserError

SUMMED = ("chunks_written", "chunks_existing", "tiles_scored", "tiles_failed", "tiles_failed_transient",
          "tiles_retried", "bytes_written", "checkpoint_seconds", "tiles_pending_retry")


def child_environments(n, gpus, environ=None):
    """The environment of each child: CUDA_VISIBLE_DEVICES one of the parent's GPUs each (--gpus), or none (CPU
    only). UserError when the parent's CUDA_VISIBLE_DEVICES names fewer than n GPUs."""
    environ = dict(os.environ if environ is None else environ)
    if not gpus:
        return [{**environ, "CUDA_VISIBLE_DEVICES": "-1"} for _ in range(n)]
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible is not None else \
        [str(i) for i in range(n)]
    if len(devices) < n:
        raise UserError(f"--gpus {n}: CUDA_VISIBLE_DEVICES={visible!r} names {len(devices)} GPUs")
    return [{**environ, "CUDA_VISIBLE_DEVICES": devices[i]} for i in range(n)]


def cpu_shares(n, cpus=None):
    """The CPUs each of n children is pinned to: an equal share of this process's CPUs (None: no pinning, when
    there are fewer CPUs than children or the system cannot pin)."""
    if cpus is None:
        if not hasattr(os, "sched_getaffinity"):
            return [None] * n
        cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < n:
        return [None] * n
    size = len(cpus) // n
    return [cpus[i * size:(i + 1) * size] for i in range(n)]


def run_parts(child_argv, n, out, gpus=False, progress=None, log=None):
    """Run n children (child_argv(i, n): the argument list after `python -m tower_detector`) of one job into
    the store `out`, merge their events, and return the merged summary (predict's keys, summed; seconds and
    tiles/s of the whole run; job_complete from the store once every child is done)."""
    progress = progress or (lambda *a, **k: None)
    log = log or (lambda message, **k: None)
    envs, shares = child_environments(n, gpus), cpu_shares(n)
    events = queue.Queue()
    children, stopping = [], threading.Event()

    def forward(signum, frame):
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward) if threading.current_thread() is threading.main_thread() \
        else None
    started = time.monotonic()
    try:
        for i in range(n):
            def pin(cpus=shares[i]):  # in the child, before it starts any thread
                if cpus:
                    os.sched_setaffinity(0, cpus)

            child = subprocess.Popen([sys.executable, "-m", "tower_detector", *child_argv(i, n)], env=envs[i],
                                     stdout=subprocess.PIPE, text=True, preexec_fn=pin)
            children.append(child)
            where = f"GPU {envs[i]['CUDA_VISIBLE_DEVICES']}" if gpus else "CPU only"
            log(f"worker {i}/{n}: pid {child.pid}, {where}" + (f", CPUs {shares[i]}" if shares[i] else ""),
                worker=i, pid=child.pid)
            threading.Thread(target=_read, args=(i, child, events), daemon=True).start()
            if stopping.is_set():  # SIGTERM while starting: the rest never start
                forward(None, None)
                break
        summary = _follow(children, events, n, started, stopping, progress, log)
    finally:
        for child in children:  # the parent failing (KeyboardInterrupt, a bug): no child is left behind
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    from .store import open_store

    with open_store(out) as store:  # each child wrote the manifest as it saw the store; now all are done
        manifest = store.finalize({"last_run": {k: summary[k] for k in (
            "tiles_scored", "tiles_failed", "tiles_pending_retry", "seconds", "tiles_per_second", "workers")}})
    summary["job_complete"] = manifest["complete"]
    return summary


def _read(i, child, events):
    for line in child.stdout:
        if line.startswith("{"):
            try:
                events.put((i, json.loads(line)))
            except ValueError:
                pass
    events.put((i, None))  # this child's output is closed


def _follow(children, events, n, started, stopping, progress, log):
    counts, results, errors, open_outputs = {}, {}, {}, len(children)
    while open_outputs:
        i, event = events.get()
        if event is None:
            open_outputs -= 1
            continue
        kind = event.get("event")
        if kind == "progress" and event.get("stage") == "tiles":
            counts[i] = (event["done"], event["total"])
            done, total = (sum(c[k] for c in counts.values()) for k in (0, 1))
            rate = done / max(time.monotonic() - started, 1e-9)
            progress(done, total, stage="tiles", tiles_per_second=round(rate, 1), workers=len(counts))
        elif kind == "log":
            log(f"worker {i}/{n}: {event.get('message', '')}", worker=i)
        elif kind == "result":
            results[i] = event
        elif kind == "error":
            errors[i] = event
    codes = [child.wait() for child in children]
    seconds = round(time.monotonic() - started, 2)
    bad = [i for i, code in enumerate(codes) if code == 2]
    if bad:
        raise UserError(errors.get(bad[0], {}).get("message", f"worker {bad[0]}/{n}: bad input"))
    failed = [i for i, code in enumerate(codes) if code not in (0, 143, -signal.SIGTERM)]
    if failed:
        reasons = "; ".join(f"worker {i}/{n} " + (errors[i]["message"] if i in errors else _exit_reason(codes[i]))
                            for i in failed)
        raise Failure(f"{len(failed)} of {n} workers failed ({reasons}); what they scored is kept: run the same "
                      "command again to resume", retry=True)
    if any(code != 0 for code in codes) or stopping.is_set():
        raise Interrupted(f"stopped on SIGTERM: {sum(r.get('chunks_written', 0) for r in results.values())} "
                          "chunks written by the workers that finished; run the same command again to resume")
    summary = {k: sum(r.get(k) or 0 for r in results.values()) for k in SUMMED}
    # per child on average: against the wall time it is the share of each child's time spent writing chunks
    summary["checkpoint_seconds"] = round(summary["checkpoint_seconds"] / n, 3)
    reasons = {}
    for r in results.values():
        for reason, count in (r.get("pending_reasons") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + count
    first = results[0]
    summary.update(seconds=seconds, tiles_per_second=round(summary["tiles_scored"] / max(seconds, 1e-9), 1),
                   workers=n, per_worker=[{k: results[i].get(k) for k in ("tiles_scored", "tiles_per_second",
                                                                           "seconds")} for i in range(n)],
                   pending_reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:3]),
                   **{k: first.get(k) for k in ("shards", "shard", "tiles_in_job", "out", "dtype_policy")})
    return summary


def _exit_reason(code):
    if code < 0:
        try:
            return f"was killed ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed (signal {-code})"
    return f"exited {code}"
