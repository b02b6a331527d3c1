"""Watching a remote job: the arithmetic behind `remote status` (rate, ETA, cost so far, failures by kind).

Pure functions over Batch's job descriptions (describe_jobs answers: times in epoch milliseconds) and plain
numbers, so that each can be checked by hand. jobs.status gathers the inputs and prints the outcome.

Sources, and why:
    worker time   every attempt of every child, startedAt to stoppedAt (a running attempt: to now). Batch's own
                  record of what ran; it leaves out instance boot and idle time, so the cost is a floor.
    tiles         the store's progress (tiles done, failed tiles by kind), less what was done before this job was
                  submitted (a retry writes into its original's store).
    rate          tiles done by this job over the wall-clock time since its first attempt started, and per worker
                  over the worker time; the ETA divides the tiles left by the per-worker rate times the workers
                  running now.
"""

from .worker import NO_GPU_EXIT_CODE, RETRY_EXIT_CODE

# kinds of failed attempts, in the order the retry rules of stack.yaml test them
SPOT_RECLAIM, RESUME, NO_GPU, TIMEOUT, START_UP, OTHER = ("spot_reclaim", "resume", "no_gpu", "timeout", "start_up",
                                                          "other")
KIND_TEXT = {SPOT_RECLAIM: "spot reclaim (Host EC2...)", RESUME: "exit 75 (resume: tiles failed transiently, or "
             "SIGTERM)", NO_GPU: "exit 78 (no GPU seen)", TIMEOUT: "attempt timeout", START_UP: "start-up failure "
             "(image pull, secrets)", OTHER: "other"}
_START_UP_REASONS = ("CannotPullContainerError", "CannotStartContainerError", "ResourceInitializationError",
                     "CannotInspectContainerError", "CannotCreateContainerError")


def attempt_kind(attempt):
    """What ended an attempt (one of Batch's `attempts` entries): a kind above, or None when it succeeded."""
    container = attempt.get("container") or {}
    status_reason = attempt.get("statusReason") or ""
    reason = container.get("reason") or ""
    code = container.get("exitCode")
    if status_reason.startswith("Host EC2"):
        return SPOT_RECLAIM
    if code == RETRY_EXIT_CODE:
        return RESUME
    if code == NO_GPU_EXIT_CODE:
        return NO_GPU
    if "timeout" in status_reason.lower():  # "Job attempt duration exceeded timeout"
        return TIMEOUT
    if status_reason.startswith("Task failed to start") or reason.startswith(_START_UP_REASONS):
        return START_UP
    if code == 0:
        return None
    return OTHER


def failure_counts(children):
    """{"attempts": {kind: n}, "children": {kind: n}}: every failed attempt by kind (retried or not), and the
    children that failed for good (status FAILED) by the kind of their last attempt."""
    attempts, failed = {}, {}
    for job in children:
        kinds = [attempt_kind(a) for a in job.get("attempts") or []]
        for kind in kinds:
            if kind:
                attempts[kind] = attempts.get(kind, 0) + 1
        if job.get("status") == "FAILED":
            kind = kinds[-1] if kinds and kinds[-1] else OTHER  # no attempt: cancelled or refused before starting
            failed[kind] = failed.get(kind, 0) + 1
    return {"attempts": attempts, "children": failed}


def worker_intervals(children, now_ms):
    """[(start_ms, end_ms)] of every attempt of these jobs: the ended ones from `attempts`, and a running job's
    current attempt from its startedAt (or the end of its last attempt, whichever is later) until now_ms."""
    spans = []
    for job in children:
        ended = [(a["startedAt"], a["stoppedAt"]) for a in job.get("attempts") or []
                 if a.get("startedAt") is not None and a.get("stoppedAt") is not None]
        spans += ended
        if job.get("status") == "RUNNING" and job.get("startedAt") is not None:
            start = max([job["startedAt"]] + [end for _, end in ended])
            spans.append((start, max(start, now_ms)))
    return spans


def worker_hours(spans):
    return sum(end - start for start, end in spans) / 3_600_000


def job_rate(tiles, spans, now_ms, running):
    """{tiles_per_second, tiles_per_worker_second, elapsed_seconds, worker_seconds}: tiles over the wall-clock
    time from the first attempt's start to now (to the last attempt's end once nothing runs), and over the
    summed worker time. None where no time has passed."""
    if not spans:
        return {"tiles_per_second": None, "tiles_per_worker_second": None, "elapsed_seconds": 0.0,
                "worker_seconds": 0.0}
    first = min(start for start, _ in spans)
    last = now_ms if running else max(end for _, end in spans)
    elapsed = max(0.0, (last - first) / 1000)
    worker = sum(end - start for start, end in spans) / 1000
    return {"tiles_per_second": tiles / elapsed if elapsed > 0 else None,
            "tiles_per_worker_second": tiles / worker if worker > 0 else None,
            "elapsed_seconds": elapsed, "worker_seconds": worker}


def eta_seconds(tiles_left, tiles_per_worker_second, running):
    """Seconds until the tiles left are done by the workers running now at the rate per worker so far; 0 when
    none is left; None when it cannot be told (no rate yet, or no worker running)."""
    if tiles_left <= 0:
        return 0.0
    if not tiles_per_worker_second or running <= 0:
        return None
    return tiles_left / (tiles_per_worker_second * running)


def duration_text(seconds):
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 48 * 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds / 86400:.1f} days"
