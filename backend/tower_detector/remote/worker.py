"""`tower-detector remote worker KIND ARGS...`: what a Batch container runs (the image's entrypoint is
`tower-detector`; `remote submit` writes the command).

KIND ARGS are a local command's own arguments (predict, train, search) with S3 URIs where the local command takes
paths. The worker brings those inputs down, runs the local command in this process, and:
  predict  scores shard AWS_BATCH_JOB_ARRAY_INDEX (or, under Kubernetes, JOB_COMPLETION_INDEX: an Indexed Job,
           see kubernetes.py) of --shards N straight into the S3 store (--out s3://...), so
           an array job of N children scores every shard once. SIGTERM: predict finishes its chunk and exits 75,
           which the job definition's retry strategy retries; the retry scores only the missing chunks. Tiles
           that failed transiently (an imagery outage) exit 75 too; the retry fetches only those.
  --pilot  `remote worker --pilot s3://.../pilot.json predict ...` (submit --pilot N): the prediction of a pilot's
  URI      sampled tiles, one job, into its own store; it measures tiles/s, the imagery's latency and errors and
           the GPU's use, writes them to that URI (pilot.py), and exits 0 even when tiles failed transiently (they
           are figures); an imagery outage exits 1, after pilot.json says so.
  train,   run in a local folder mirrored to --out s3://... (transfer.DirSync): pulled before, pushed every
  search   TOWER_DETECTOR_SYNC_SECONDS (120) and at the end, so a retry resumes (train from its checkpoints,
           search from history.json).
A job that asked for a GPU (TOWER_DETECTOR_REQUIRE_GPU=1, set by the stack's job definition) first checks that
TensorFlow sees one, and otherwise exits 78 at once, which no retry rule retries: an instance without a working
GPU would score on its few vCPUs for the whole attempt.
Imagery secrets arrive as environment variables (Batch injects them from SSM Parameter Store); the imagery spec
keeps its ${NAME} references, which imagery.open_imagery expands, so no secret is on the command line, in the
store or in a log.
"""

import hashlib
import os
import shutil
import signal
import tempfile
import threading
import time

from ..common.errors import Failure, Interrupted, UserError
from ..pipeline import REMOTE, STAGE
from .transfer import DirSync, fetch_input, parse_s3, s3_client

RETRY_EXIT_CODE = 75  # EX_TEMPFAIL: resume me (tiles failed transiently, or stopped by SIGTERM); Batch retries it
NO_GPU_EXIT_CODE = 78  # EX_CONFIG: a GPU was asked for and TensorFlow sees none; not retried
REQUIRE_GPU = "TOWER_DETECTOR_REQUIRE_GPU"


class NoGpu(Failure):
    exit_code = NO_GPU_EXIT_CODE


def check_gpu(kind):
    """Exit NO_GPU_EXIT_CODE, before any input is fetched, when the job asked for a GPU and TensorFlow sees none."""
    if os.environ.get(REQUIRE_GPU, "").strip().lower() not in ("1", "true", "yes") or not STAGE[kind].gpu:
        return None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise NoGpu(f"this job asked for a GPU ({REQUIRE_GPU}=1), but TensorFlow sees none: the instance has no GPU, "
                    "or its NVIDIA driver or the image's CUDA libraries do not work; stopping rather than scoring on "
                    f"the CPU (exit {NO_GPU_EXIT_CODE}, not retried)")
    return gpus


def run_worker(argv, rep, pilot=None):
    """pilot: an s3:// URI for pilot.json: the prediction is a pilot (pilot.py), which writes its figures there."""
    started = time.monotonic()
    if not argv or argv[0] not in REMOTE:
        raise UserError(f"remote worker: the first argument must be one of {', '.join(REMOTE)}")
    from ..cli import build_parser

    args = build_parser().parse_args(list(argv))
    kind = args.command
    if pilot and (kind != "predict" or not pilot.lower().startswith("s3://")):
        raise UserError("remote worker --pilot s3://.../pilot.json runs a prediction as a pilot")
    gpus = check_gpu(kind)
    if gpus:
        rep.log(f"worker: {len(gpus)} GPU{'s' * (len(gpus) != 1)} seen")
    s3 = s3_client()
    root = os.environ.get("TOWER_DETECTOR_WORK") or os.path.join(tempfile.gettempdir(), "tower-detector-work")
    # a folder per job (per --out): the same on every attempt, because search records its data path in its
    # history and would refuse a resume from another one
    work = os.path.join(root, hashlib.sha256(str(args.out).encode()).hexdigest()[:16])
    os.makedirs(work, exist_ok=True)

    if kind == "predict":
        # children of one prediction may share a machine: each its own copy of the inputs
        inputs = tempfile.mkdtemp(prefix="inputs-", dir=work)
        try:
            model_uri = args.model
            _fetch_inputs(s3, args, inputs, rep)
            if pilot:
                from .pilot import run_pilot

                run_pilot(args, rep, pilot, s3, model_uri=model_uri, started=started)
            else:
                _predict(args, rep)
        finally:
            shutil.rmtree(inputs, ignore_errors=True)
    else:
        _fetch_inputs(s3, args, work, rep)
        _mirrored(s3, args, work, rep)


def _fetch_inputs(s3, args, folder, rep):
    for name in STAGE[args.command].inputs:  # options whose value is an input path: fetched when s3://
        value = getattr(args, name, None)
        if isinstance(value, str) and value.lower().startswith("s3://"):
            suffix = "" if name in ("model", "data") else os.path.splitext(parse_s3(value)[1])[1]
            rep.log(f"fetching --{name} {value}")
            setattr(args, name, fetch_input(s3, value, os.path.join(folder, name + suffix)))


SHARD_INDEX_VARIABLES = ("AWS_BATCH_JOB_ARRAY_INDEX", "JOB_COMPLETION_INDEX")  # Batch's array job; Kubernetes'
SHARD_LIST = "TOWER_DETECTOR_SHARDS"  # `remote retry`: the shards its children score, child i the i-th


def format_shards(indexes):
    """Sorted shard indexes as runs: [1, 2, 3, 7] -> "1-3,7"."""
    runs = []
    for i in sorted(set(indexes)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def parse_shards(text):
    indexes = []
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        if not a.isdigit() or (b and not b.isdigit()):
            raise UserError(f"{SHARD_LIST}={text!r}: not a list of shard indexes (like 1-3,7)")
        indexes += range(int(a), int(b or a) + 1)
    return indexes


def shard_of(n, environ):
    """This worker's shard "i/n": its index from AWS Batch (an array job's child) or else from Kubernetes (an
    Indexed Job's pod); a job of one shard needs neither. With TOWER_DETECTOR_SHARDS (a retry of some shards),
    the index picks one of those."""
    listed = parse_shards(environ[SHARD_LIST]) if environ.get(SHARD_LIST) else None
    name = next((v for v in SHARD_INDEX_VARIABLES if environ.get(v) not in (None, "")), None)
    if name is None:
        if listed and len(listed) == 1:
            return f"{listed[0]}/{n}"
        if n > 1:
            raise UserError(f"neither {' nor '.join(SHARD_INDEX_VARIABLES)} is set, and the job has {n} shards")
        return "0/1"
    value = environ[name]
    if not value.isdigit() or int(value) >= len(listed or range(n)):
        raise UserError(f"{name}={value!r} is not a shard of 0..{n - 1}"
                        + (f" (nor a child of the {len(listed)} listed in {SHARD_LIST})" if listed else ""))
    index = listed[int(value)] if listed else int(value)
    if index >= n:
        raise UserError(f"{SHARD_LIST} lists shard {index}, but the job has {n} shards")
    return f"{index}/{n}"


def _predict(args, rep):
    if args.shard is None:
        args.shard = shard_of(args.shards or 1, os.environ)
    rep.log(f"worker: predict shard {args.shard} into {args.out}")
    try:
        args.func(args, rep)  # the store is on S3 already
    except Interrupted as exc:  # SIGTERM, the chunk finished: exit 75 like any "resume me", which Batch retries
        raise _Resume(str(exc)) from None
    except Failure as exc:
        if exc.retry:  # tiles that failed transiently, or an imagery outage: Batch retries the child
            exc.exit_code = RETRY_EXIT_CODE
        raise


def _mirrored(s3, args, work, rep):
    """train or search in a local folder mirrored to --out s3://...: pulled first, pushed while and after."""
    if not str(args.out).lower().startswith("s3://"):
        raise UserError(f"remote worker {args.command}: --out must be s3://bucket/prefix, not {args.out}")
    bucket, prefix = parse_s3(args.out)
    sync = DirSync(s3, os.path.join(work, "out"), bucket, prefix,
                   interval=float(os.environ.get("TOWER_DETECTOR_SYNC_SECONDS", "120")), log=rep.log)
    pulled = sync.pull()
    if pulled:
        rep.log(f"resuming from {pulled} files in {args.out}")
    args.out = sync.local
    args.in_place = True  # train: its resume state in the mirrored folder itself (S3 is the output, not it)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # a spot notice or a cancel: push what is whole now (ECS kills the container after its stop timeout)
        previous = signal.signal(signal.SIGTERM, lambda *_: sync.kick())
    sync.start()
    outcome = _HeldResult(rep)
    try:
        args.func(args, outcome)
    finally:
        n = sync.close()
        rep.log(f"synced {n} files to s3://{bucket}/{sync.prefix}")
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    outcome.release()  # the result last: when it is out, the output is on S3


class _Resume(Failure):
    exit_code = RETRY_EXIT_CODE

    def __init__(self, message):
        super().__init__(message, retry=True)


class _HeldResult:
    """A Reporter whose result is held back until release()."""

    def __init__(self, rep):
        self._rep, self._result = rep, None

    def __getattr__(self, name):
        return getattr(self._rep, name)

    def result(self, *args, **fields):
        self._result = (args, fields)

    def release(self):
        if self._result is not None:
            self._rep.result(*self._result[0], **self._result[1])
