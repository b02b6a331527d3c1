"""Remote jobs: submit (with a cost estimate), status, cancel, logs, fetch, secrets, and the local job list.

Layout in the stack's bucket:
    inputs/{kind}-{sha256}.tar|.json|...   uploaded inputs, content-addressed (the same input is uploaded once)
    jobs/{name}/cover.json                 a prediction's tile cover (computed here, exact; shards read it)
    jobs/{name}/results/                   a prediction's results store (prediction/store's layout)
    jobs/{name}/pilot.json                 a pilot's figures (pilot.py), next to its own store
    jobs/{name}/out/                       a training's model folder, or a search's folder, mirrored by the worker
    jobs/{name}/job-record.json            the job's record (below) without the local AWS profile, for teammates
Local list of jobs: $TOWER_DETECTOR_HOME/jobs.json (default ~/.tower-detector), so that status, logs and fetch
take the short name given at submit time (or the Batch job id). A name not in it is looked up in the stack's
bucket (job-record.json), so that a teammate with the same stack can follow, fetch and retry a job.
"""

import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time

from ..common.atomic import atomic_file
from ..common.errors import UserError
from ..common.redaction import redact
from ..common.redaction import secrets as literal_secrets
from ..pipeline import rate_share
from . import watch
from .stack import stack_outputs

# Throughput behind the estimate: an assumption, not a measurement (docs/aws.md says why); a pilot measures it
# (--pilot N, then --from-pilot NAME). Prices: capacity.py.
DEFAULT_TILES_PER_SECOND = 150.0
DEFAULT_SPOT_PRICE = 0.20  # $ per worker-hour when nothing better is known (capacity.py has prices per type)
STARTUP_MINUTES = 5.0  # per shard: instance boot, worker image pull, model load
S3_PUT_PER_1000 = 0.005  # $ per 1,000 PUT/LIST requests, S3 Standard, us-east-1
S3_GET_PER_1000 = 0.0004  # $ per 1,000 GET requests
MAX_ARRAY_SIZE = 10_000  # Batch's limit on array job children
REQUESTS_PER_TILE = 1.0  # an XYZ tile is one request (its retries more): what a child's share of --rate-limit buys
DEFAULT_TIMEOUT_HOURS = 24.0  # an attempt's limit when neither --timeout-hours nor the job definition gives one
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# ---------------------------------------------------------------------------------------------
# the local list of jobs
# ---------------------------------------------------------------------------------------------
def _home():
    return os.environ.get("TOWER_DETECTOR_HOME") or os.path.join(os.path.expanduser("~"), ".tower-detector")


def load_jobs():
    path = os.path.join(_home(), "jobs.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError:
        raise UserError(f"{path} is not valid JSON: fix or remove it") from None


def save_job(record):
    jobs = load_jobs()
    jobs[record["name"]] = record
    os.makedirs(_home(), exist_ok=True)
    with atomic_file(os.path.join(_home(), "jobs.json")) as f:
        f.write(redact(json.dumps(jobs, indent=1)))  # specs carry ${NAME} references only; this is a last check


def find_job(ref, bucket_lookup=None):
    """A job of the local list by its name or Batch job id; else, by name, the record in the stack's bucket
    (bucket_lookup: a function of () -> (aws, bucket), called only then); a bare Batch id is taken as it is."""
    jobs = load_jobs()
    if ref in jobs:
        return jobs[ref]
    for record in jobs.values():
        if ref in (record.get("job_id"), record.get("job_arn")):
            return record
    if re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", ref):
        return {"name": ref, "job_id": ref, "kind": None}
    where, unsearched = os.path.join(_home(), "jobs.json"), ""
    if bucket_lookup is not None and _NAME.match(ref):
        try:
            aws, bucket = bucket_lookup()
        except UserError as exc:  # no such stack here: say so, after what was not found
            unsearched = f"; the stack's bucket was not searched: {exc}"
        else:
            record = read_shared_record(aws, bucket, ref)
            if record is not None:
                return record
            where += f" nor in s3://{bucket}/jobs/"
    known = ", ".join(sorted(jobs)[-5:]) or "none yet"
    raise UserError(f"no remote job {ref!r} in {where} (known here: {known}){unsearched}")


# ---------------------------------------------------------------------------------------------
# job records in the stack's bucket, for teammates
# ---------------------------------------------------------------------------------------------
RECORD_NAME = "job-record.json"
_LOCAL_ONLY = ("profile",)  # a named profile is this machine's: a teammate uses their own


def record_key(name):
    return f"jobs/{name}/{RECORD_NAME}"


def shared_record(record):
    """The record as the bucket keeps it: without what is only this machine's."""
    return {k: v for k, v in record.items() if k not in _LOCAL_ONLY}


def publish_record(aws, record):
    """Write the job's record to s3://BUCKET/jobs/NAME/job-record.json (rewritten by a later publish)."""
    body = redact(json.dumps(shared_record(record), indent=1))  # specs carry ${NAME} references only; a last check
    aws.call("s3", "put_object", what=f"s3://{record['bucket']}", Bucket=record["bucket"],
             Key=record_key(record["name"]), Body=body.encode(), ContentType="application/json")


def read_shared_record(aws, bucket, name):
    """The record of job `name` from the bucket, or None when there is none."""
    from .transfer import read_json

    record = read_json(aws, bucket, record_key(name))
    if record is None:
        return None
    if not isinstance(record, dict) or record.get("name") != name or not record.get("job_id"):
        raise UserError(f"s3://{bucket}/{record_key(name)} is not a job record of {name!r}")
    return dict(record, shared=True)


def shared_records(aws, bucket):
    """Every job record in the bucket: one delimited listing of jobs/, then one GET per job."""
    names = [p["Prefix"][len("jobs/"):].rstrip("/") for p in aws.pages(
        "s3", "list_objects_v2", "CommonPrefixes", what=f"s3://{bucket}/jobs/", Bucket=bucket, Prefix="jobs/",
        Delimiter="/")]
    records = [read_shared_record(aws, bucket, name) for name in names if _NAME.match(name)]
    return [r for r in records if r is not None]


# ---------------------------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------------------------
def secrets_path(aws, stack):
    from .stack import describe_stack

    info = describe_stack(aws, stack)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in (info or {}).get("Outputs", [])}
    return outputs.get("SecretsPath", "/tower-detector/")


def put_secret(aws, stack, name, value):
    """Store `value` as the SecureString parameter {SecretsPath}{name}; returns its name and version."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise UserError(f"secret names are environment variable names (letters, digits, _): not {name!r}")
    if not value:
        raise UserError("the secret is empty")
    param = secrets_path(aws, stack) + name
    answer = aws.call("ssm", "put_parameter", what=f"the parameter {param}", Name=param, Value=value,
                      Type="SecureString", Overwrite=True, Description="imagery secret for tower-detector jobs")
    return param, answer.get("Version")


def read_secret_value(stdin=None, prompt=None):
    """The secret from stdin (a pipe) or a prompt that does not echo; never from the command line."""
    import getpass

    stdin = stdin or sys.stdin
    if stdin.isatty():
        return (prompt or getpass.getpass)("secret value (not shown): ")
    return stdin.read().rstrip("\r\n")


def _imagery_secrets(aws, outputs, imagery):
    """Batch `secrets` for the ${NAME} references of an imagery spec; a secret written in clear is refused."""
    clear = literal_secrets(imagery)  # every value but a harmless parameter's (redaction.HARMLESS) may be a secret
    if clear:
        names = ", ".join(name or "a value with no name" for name in clear)
        raise UserError(f"the imagery spec holds a secret in clear ({names}): store each with `tower-detector "
                        "remote secret put NAME` and write ${NAME} in its place")
    path = outputs.get("SecretsPath", "/tower-detector/")
    secrets = []
    for ref in sorted(set(_REF.findall(imagery))):
        param = path + ref
        found = aws.call("ssm", "describe_parameters", what="the stored secrets",
                         ParameterFilters=[{"Key": "Name", "Values": [param]}])["Parameters"]
        if not found:
            raise UserError(f"the imagery refers to ${{{ref}}}, but no secret {param} is stored: run "
                            f"`tower-detector remote secret put {ref}`")
        arn = f"arn:{aws.partition}:ssm:{aws.region}:{aws.account}:parameter{param}"
        secrets.append({"name": ref, "valueFrom": arn})  # the ARN names the secret; Batch fetches the value
    return secrets


def pinned_image(aws, image):
    """The worker image `repo:tag` as `repo@sha256:...`, its digest in ECR now, so that a push while the job runs
    does not mix code between its children and retries. An image already pinned is kept."""
    if "@sha256:" in image:
        return image
    uri, _, tag = image.rpartition(":")
    if not uri or "/" in tag:
        uri, tag = image, "latest"
    repo = uri.split("/", 1)[1] if "/" in uri else uri
    from botocore.exceptions import ClientError

    try:
        found = aws.client("ecr").describe_images(repositoryName=repo, imageIds=[{"imageTag": tag}])["imageDetails"]
    except ClientError as exc:
        from .aws import error_code, raise_user_error

        if error_code(exc)[0] in ("ImageNotFoundException", "RepositoryNotFoundException"):
            found = []
        else:
            raise_user_error(exc, f"ECR repository {repo}", aws.region)
            raise
    if not found:
        raise UserError(f"no worker image {uri}:{tag} in ECR: build and push it (docs/aws.md, the worker image)")
    return f"{uri}@{found[0]['imageDigest']}"


def _job_definition(aws, base_arn, secrets, image):
    """A copy of the stack's job definition with the worker image pinned by digest, and the secrets mapped to
    environment variables (Batch takes neither the image nor `secrets` at submit time, only in a job
    definition); one copy per image and set of secrets, reused."""
    base = aws.call("batch", "describe_job_definitions", what="the job definition",
                    jobDefinitions=[base_arn])["jobDefinitions"]
    if not base:
        raise UserError(f"job definition {base_arn} is missing: run `tower-detector remote setup`")
    base = base[0]
    props = dict(base["containerProperties"], image=image)
    if secrets:
        props["secrets"] = secrets
    # the API's values are strings; some emulators answer numbers, which register_job_definition refuses
    props["resourceRequirements"] = [dict(r, value=str(r["value"])) for r in props.get("resourceRequirements") or []]
    digest = hashlib.sha256(json.dumps([base_arn, image, secrets], sort_keys=True).encode()).hexdigest()[:10]
    name = f"{base['jobDefinitionName']}-p{digest}"
    found = aws.call("batch", "describe_job_definitions", what="the job definition", jobDefinitionName=name,
                     status="ACTIVE")["jobDefinitions"]
    if found:
        return found[0]["jobDefinitionArn"]
    extra = {k: base[k] for k in ("retryStrategy", "timeout", "platformCapabilities", "propagateTags") if base.get(k)}
    answer = aws.call("batch", "register_job_definition", what="the job definition", jobDefinitionName=name,
                      type="container", containerProperties=props, tags={"project": "tower-detector"}, **extra)
    return answer["jobDefinitionArn"]


# ---------------------------------------------------------------------------------------------
# the estimate
# ---------------------------------------------------------------------------------------------
def estimate_predict(tiles, shards, chunks, *, tiles_per_second=DEFAULT_TILES_PER_SECOND,
                     spot_price=DEFAULT_SPOT_PRICE, parallel=None, views=1, capacity=None, rate=None, sizing=None,
                     timeout_hours=None, largest_shard=None, rate_limit=None):
    """GPU-hours, dollars and S3 requests of a prediction (see the constants above for the assumptions).
    tiles_per_second is one view's; predict --views scores each tile that many times. capacity: capacity.plan's
    answer; its workers at once, not the shards, bound `parallel`, and its price is the spot_price. rate: where
    tiles_per_second comes from (pilot.rate_source's answer, {"kind": "given"}, or None: the assumption). sizing:
    capacity.size_shards's answer when it chose the shards (None: --shards). timeout_hours and largest_shard (its
    tiles): a warning when that shard would outlast an attempt. rate_limit: the job's imagery requests/s, shared
    out among the `parallel` children at once; where a child's share is fewer tiles/s than its GPU scores, the
    share sets the time (the GPU waits, and is paid for)."""
    if capacity is not None:
        parallel = min(parallel or shards, max(1, capacity["workers"]))
        spot_price = capacity["spot_price"]
    parallel = max(1, min(shards, parallel or shards))
    per_child = rate_share(rate_limit, parallel)
    gpu_rate = tiles_per_second / views  # tiles/s one worker's GPU scores
    worker_rate = min(gpu_rate, per_child / REQUESTS_PER_TILE) if per_child else gpu_rate
    gpu_hours = tiles / worker_rate / 3600
    instance_hours = gpu_hours + shards * STARTUP_MINUTES / 60
    # PUT-priced: one per chunk, job.json + cover.json + manifest per shard, the uploads, a listing per shard
    puts = chunks + 4 * shards + 2
    # GET-priced: model, cover, job.json, cover.json per shard; `remote fetch` reads every chunk once
    gets = 4 * shards + chunks + 2
    s3_dollars = puts / 1000 * S3_PUT_PER_1000 + gets / 1000 * S3_GET_PER_1000
    wall_hours = math.ceil(shards / parallel) * (gpu_hours / shards + STARTUP_MINUTES / 60)
    warnings = []
    if timeout_hours and largest_shard:
        hours = largest_shard / worker_rate / 3600 + STARTUP_MINUTES / 60
        if hours > timeout_hours:
            warnings.append(f"warning: at {tiles_per_second:g} tiles/s the largest shard ({largest_shard:,} tiles) "
                            f"takes about {hours:,.1f} h, over the {timeout_hours:g} h attempt timeout: its child "
                            "would be stopped and fail; leave out --shards to size them, or give more")
    return {"tiles": tiles, "shards": shards, "chunks": chunks, "tiles_per_second": tiles_per_second,
            "rate": rate or {"kind": "assumed"}, "sizing": sizing, "timeout_hours": timeout_hours,
            "warnings": warnings,
            "views": views, "gpu_hours": round(gpu_hours, 3), "instance_hours": round(instance_hours, 3),
            "spot_price": spot_price, "compute_dollars": round(instance_hours * spot_price, 2),
            "s3_puts": puts, "s3_gets": gets, "s3_dollars": round(s3_dollars, 4),
            "dollars": round(instance_hours * spot_price + s3_dollars, 2), "parallel": parallel,
            "wall_hours": round(wall_hours, 2), "rate_limit": rate_limit, "rate_limit_per_child": per_child,
            "tiles_per_second_per_worker": round(worker_rate, 3), "limited_by_rate_limit": worker_rate < gpu_rate,
            "capacity": {k: v for k, v in capacity.items() if k != "problems"} if capacity else None}


def estimate_text(e):
    from .capacity import capacity_text

    c = e.get("capacity")
    source = ("--spot-price" if not c else f"{c['price_source']}" + (f", the dearest worker of the mix: "
              f"{c['price_type']}" if c.get("price_type") else ""))
    return "\n".join([
        f"estimate: {e['tiles']:,} tiles (the exact cover) in {e['shards']} shards, {e['chunks']:,} chunks",
        *([f"  {sizing_text(e)}"] if e.get("sizing") else []),
        *([f"  {capacity_text(c)}"] if c else []),
        f"  GPU time: {e['gpu_hours']:,.2f} GPU-hours at " + (_rate_limited(e) if e.get("limited_by_rate_limit") else
        f"{e['tiles_per_second']:g} tiles/s per GPU ({rate_text(e.get('rate'))})" +
        (f" x {e['views']} views a tile" if e["views"] > 1 else "")) +
        f" + {STARTUP_MINUTES:g} min start-up per shard = {e['instance_hours']:,.2f} "
        "instance-hours",
        *_rate_limit_lines(e),
        f"  compute:  {e['instance_hours']:,.2f} h x ${e['spot_price']:.2f}/h spot ({source}) = "
        f"${e['compute_dollars']:,.2f}",
        f"  S3:       {e['s3_puts']:,} PUTs (one per chunk) + {e['s3_gets']:,} GETs = ${e['s3_dollars']:,.4f}",
        f"  total:    ${e['dollars']:,.2f}; about {e['wall_hours']:,.1f} h with {e['parallel']} worker"
        f"{'s' * (e['parallel'] != 1)} at once",
        *[f"  {w}" for w in e.get("warnings") or []]])


def rate_text(rate):
    """Where the estimate's tiles/s comes from: measured by a pilot, given, or assumed."""
    rate = rate or {"kind": "assumed"}
    if rate["kind"] == "pilot":
        return (f"measured by the pilot {rate['pilot']} on {rate['tiles']:,} tiles"
                + (f", {rate['gpu']}" if rate.get("gpu") else ""))
    if rate["kind"] == "given":
        return "as given: --tiles-per-second, not measured"
    return "an assumption: --tiles-per-second"


def sizing_text(e):
    z = e["sizing"]
    if z["shards"] == 1:
        return f"shards:   one job: about {z['shard_hours']:,.2f} h, start-up included"
    return (f"shards:   {z['shards']} sized from the rate: each about {z['shard_hours']:,.2f} h, start-up included, "
            f"within half the {e['timeout_hours']:g} h attempt timeout"
            + (", and a multiple of the workers at once" if e.get("capacity") else "")
            + ("" if z["fits"] else f"; more would exceed Batch's {MAX_ARRAY_SIZE:,} children or the area's "
               "columns"))


def _rate_limit_lines(e):
    """What --rate-limit means for the estimate: each child's share, and whether it, not the GPUs, sets the time."""
    if not e.get("rate_limit"):
        return []
    children = e["parallel"]
    share = (f"  imagery:  --rate-limit {e['rate_limit']:g} requests/s for the job, shared by the {children} "
             f"child{'ren' * (children != 1)} at once: {e['rate_limit_per_child']:g} requests/s each")
    if e["limited_by_rate_limit"]:
        return [share, "  the rate limit, not the GPUs, sets the time: more workers would share it, not finish "
                       "sooner; the GPUs wait, and are paid for"]
    return [share + ", more than the GPU scores: the GPUs set the time"]


def _rate_limited(e):
    """The GPU time's rate when a child's share of the rate limit is below what its GPU scores."""
    views = f" / {e['views']} views a tile" if e["views"] > 1 else ""
    return (f"{e['tiles_per_second_per_worker']:g} tiles/s a worker (its share of --rate-limit, one request a tile; "
            f"its GPU would score {e['tiles_per_second'] / e['views']:g}: {e['tiles_per_second']:g} tiles/s per GPU "
            f"({rate_text(e.get('rate'))}){views})")


# ---------------------------------------------------------------------------------------------
# submit
# ---------------------------------------------------------------------------------------------
def submit(aws, kind, args, actions, *, stack, name=None, yes=False, events=False, confirm=None, log=None):
    """Upload the inputs, submit the Batch job (an array job of one child per shard for predict), record it.

    args: the parsed options of the local command `kind` (mirrored by `actions`), with S3 URIs or local paths.
    """
    log = log or (lambda message, **fields: None)
    outputs = stack_outputs(aws, stack)
    bucket = outputs["Bucket"]
    name = name or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not _NAME.match(name):
        raise UserError(f"job names are letters, digits, - and _ (at most 100): not {name!r}")
    if name in load_jobs():
        raise UserError(f"a remote job named {name!r} exists already: give another --name")
    prefix = f"jobs/{name}/"
    base_def = outputs["JobDefinition"]
    ce = aws.call("batch", "describe_compute_environments", what="the compute environment",
                  computeEnvironments=[outputs["ComputeEnvironment"]])["computeEnvironments"]
    jd = aws.call("batch", "describe_job_definitions", what="the job definition",
                  jobDefinitions=[base_def])["jobDefinitions"]
    if not jd:
        raise UserError(f"job definition {base_def} is missing: run `tower-detector remote setup`")
    vcpus = next((int(float(r["value"])) for r in (jd[0]["containerProperties"].get("resourceRequirements") or [])
                  if r["type"] == "VCPU"), 4)
    image = pinned_image(aws, jd[0]["containerProperties"]["image"])  # before anything is uploaded
    from .capacity import plan as capacity_plan

    capacity = capacity_plan(aws, ce[0].get("computeResources", {}) if ce else {}, vcpus, spot_price=args.spot_price)
    if capacity["problems"]:
        raise UserError(capacity["problems"][0])

    values = {a.dest: getattr(args, a.dest, None) for a in actions}
    pilot_tiles, from_pilot = getattr(args, "pilot", None), getattr(args, "from_pilot", None)
    _check_pilot_options(values, pilot_tiles, from_pilot, getattr(args, "tiles_per_second", None), bucket, prefix)
    _check_local_inputs(kind, values)
    secrets, record, worker = [], {}, []
    if kind == "predict":
        from ..prediction.predict import check_rate_limit

        secrets = _check_imagery(aws, outputs, values["imagery"], log)
        check_rate_limit(values.get("rate_limit"), values["imagery"])
        timeout_hours = args.timeout_hours or (jd[0].get("timeout") or {}).get("attemptDurationSeconds", 0) / 3600 \
            or DEFAULT_TIMEOUT_HOURS
        tiles_per_second = args.tiles_per_second or DEFAULT_TILES_PER_SECOND
        rate = {"kind": "given"} if args.tiles_per_second else None
        cover = _cover(values)
        if from_pilot:
            from .pilot import check_same_run, rate_source, usable_pilot

            figures = usable_pilot(aws, bucket, from_pilot)
            check_same_run(figures, from_pilot, model=values["model"], zoom=cover.zoom, imagery=values["imagery"],
                           precision=values["precision"])
            tiles_per_second, rate = figures["tiles_per_second_per_view"], rate_source(figures, from_pilot)
        views = values.get("views") or 1
        if from_pilot and (figures.get("views") or 1) != views:
            log(f"note: the pilot {from_pilot} scored {figures.get('views') or 1} views a tile and this run {views}: "
                "its rate is scaled by the views, as if the model alone set it; a pilot with the same --views measures "
                "it")
        area_tiles, sizing = cover.count, None
        if pilot_tiles:
            from .pilot import report_key, sample_cover

            # what status needs to size the full run from the pilot's rate: the area's tiles and columns
            record["pilot"] = {"report": f"s3://{bucket}/{report_key(name)}", "area_tiles": area_tiles,
                               "area_columns": len(cover.column_counts()[0]), "timeout_hours": timeout_hours,
                               "checkpoint_every": values["checkpoint_every"]}
            cover = sample_cover(cover, pilot_tiles)
            record["pilot"]["tiles"] = cover.count
            worker = ["--pilot", record["pilot"]["report"]]
            log(f"pilot: {cover.count:,} tiles spread evenly over the area's {area_tiles:,}, scored on one worker "
                f"into the pilot's own store s3://{bucket}/{prefix}results")
        if not values.get("shards") and not pilot_tiles:
            from .capacity import size_shards

            sizing_rate = tiles_per_second  # with a rate limit, a child's share may be what sets its pace
            if values.get("rate_limit"):
                share = rate_share(values["rate_limit"], capacity["workers"] or 1) / REQUESTS_PER_TILE
                sizing_rate = min(tiles_per_second, share * views)
            sizing = size_shards(cover.count, sizing_rate, views=views, timeout_hours=timeout_hours,
                                 workers=capacity["workers"] or 1, startup_minutes=STARTUP_MINUTES,
                                 max_shards=MAX_ARRAY_SIZE, columns=len(cover.column_counts()[0]))
            values["shards"] = sizing["shards"]
        plan = _plan(values, cover)
        shards = len(plan.shards)
        estimate = estimate_predict(cover.count, shards, plan.total_chunks, tiles_per_second=tiles_per_second,
                                    views=views, capacity=capacity, rate=rate, sizing=sizing,
                                    timeout_hours=timeout_hours, largest_shard=_largest_shard(cover, plan.shards),
                                    rate_limit=values.get("rate_limit"))
        values["out"] = _out(values.get("out"), bucket, prefix + "results")
        record.update(store=values["out"], tiles=cover.count, array_size=shards if shards > 1 else None)
        if values.get("rate_limit"):  # the job's limit, shared out: each child's command carries its share
            record.update(rate_limit=values["rate_limit"], workers_at_once=capacity["workers"])
            values["rate_limit"] = estimate["rate_limit_per_child"]
    else:
        estimate = {"instance_hours": None, "spot_price": capacity["spot_price"],
                    "note": "one GPU instance for as long as it runs; billed per second"}
        values["out"] = _out(values.get("out"), bucket, prefix + "out")
        shards = 1
    for key, value in values.items():  # before anything is uploaded
        if isinstance(value, str) and value.lower().startswith("s3://") and key != "imagery":
            if value[5:].split("/", 1)[0] != bucket:
                raise UserError(f"--{key.replace('_', '-')} {value}: the workers may use only the stack's bucket "
                                f"s3://{bucket}/ (its job role allows nothing else)")
    if aws.call("s3", "list_objects_v2", what=f"s3://{bucket}", Bucket=bucket, Prefix=prefix, MaxKeys=1).get(
            "KeyCount"):
        raise UserError(f"s3://{bucket}/{prefix} holds another job of that name: give another --name")
    text = (estimate_text(estimate) if kind == "predict" else
            f"estimate: one GPU instance (spot, about ${capacity['spot_price']:g}/h, {capacity['price_source']}) for "
            f"as long as the {kind} runs")
    log(text, estimate=estimate)
    _confirm(yes, events, confirm)

    from .transfer import upload

    if kind == "predict":
        values["model"] = _input(aws, values["model"], bucket, "model", top_level_only=True)
        fd, cover_path = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        try:
            cover.save(cover_path, shards=plan.shards)
            upload(aws, cover_path, bucket, prefix + "cover.json")
        finally:
            os.remove(cover_path)
        values.update(tiles=f"s3://{bucket}/{prefix}cover.json", area=None, shards=shards)
    else:
        values["data"] = _input(aws, values["data"], bucket, "data")
        for opt in ("params", "space"):
            if values.get(opt):
                values[opt] = _input(aws, values[opt], bucket, opt)
        if values.get("weights") not in (None, "imagenet", "none"):
            values["weights"] = _input(aws, values["weights"], bucket, "weights")
    uploads = {k: v for k, v in values.items() if isinstance(v, str) and v.startswith("s3://") and k != "imagery"}
    command = ["remote", "worker", *worker, kind, *_argv(actions, values), "--events"]
    job_def = _job_definition(aws, base_def, secrets, image)
    request = dict(jobName=name, jobQueue=outputs["JobQueue"], jobDefinition=job_def,
                   containerOverrides={"command": command,
                                       "environment": [{"name": "TOWER_DETECTOR_JOB", "value": name}]},
                   tags={"project": "tower-detector", "job": name}, propagateTags=True)
    if shards > 1:
        request["arrayProperties"] = {"size": shards}
    if getattr(args, "timeout_hours", None):
        request["timeout"] = {"attemptDurationSeconds": max(60, int(args.timeout_hours * 3600))}
    answer = aws.call("batch", "submit_job", what=f"job queue {outputs['JobQueue'].rsplit('/', 1)[-1]}", **request)
    record.update(name=name, kind=kind, job_id=answer["jobId"], job_arn=answer.get("jobArn"), region=aws.region,
                  profile=aws.profile, stack=stack, bucket=bucket, out=values["out"], log_group=outputs.get("LogGroup"),
                  job_definition=job_def, image=image, inputs=uploads, estimate=estimate, command=command,
                  submitted=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    save_job(record)
    publish_record(aws, record)
    return record


def _check_local_inputs(kind, values):
    """What a worker would refuse once an instance has started for it, refused here (local inputs only)."""
    from ..training.model import read_params
    from ..training.params import load_params_file

    def local(name):
        value = values.get(name)
        return value if value is not None and not str(value).lower().startswith("s3://") else None

    if local("model"):
        read_params(local("model"))
        if not os.path.isfile(os.path.join(local("model"), "model.keras")):
            raise UserError(f"{local('model')} has params.json but no model.keras")
    if local("data") and not any(os.path.isfile(os.path.join(local("data"), f)) for f in ("index.csv", "data.npz")):
        raise UserError(f"{local('data')} is not a dataset: it has neither index.csv nor data.npz")
    for name in ("params", "space"):
        if local(name):
            load_params_file(local(name))
    weights = local("weights")
    if weights and weights not in ("imagenet", "none") and not os.path.isfile(weights):
        raise UserError(f"--weights {weights}: no such file (imagenet, none, or an Xception notop .h5 file)")


def _check_imagery(aws, outputs, imagery, log):
    lower = imagery.lower()
    if not lower.startswith(("http://", "https://", "s3://")):
        raise UserError(f"remote imagery must be reachable from AWS (an http(s) URL template or s3://...), not "
                        f"{redact(imagery)}")
    if lower.startswith("s3://") and imagery[5:].split("/", 1)[0] != outputs["Bucket"]:
        log(f"note: the workers' job role reads only s3://{outputs['Bucket']}/; give it read access to "
            f"{redact(imagery)} (IAM, role {outputs.get('JobRoleArn', '?').rsplit('/', 1)[-1]})")
    return _imagery_secrets(aws, outputs, imagery)


def _cover(values):
    """The exact cover of a prediction, computed here (the estimate and the shard sizes need it)."""
    from ..geo.areas import load_area
    from ..geo.cover import TileCover, tile_cover

    if (values.get("area") is None) == (values.get("tiles") is None):
        raise UserError("remote submit predict needs --area or --tiles (one of them)")
    cover = TileCover.load(values["tiles"]) if values.get("tiles") else tile_cover(load_area(values["area"]),
                                                                                   values["zoom"])
    if cover.count == 0:
        raise UserError("the area or tile list holds no tiles")
    if cover.count > values["max_tiles"]:
        raise UserError(f"{cover.count:,} tiles is over --max-tiles {values['max_tiles']:,}")
    return cover


def _plan(values, cover):
    """The chunk plan of a prediction in values["shards"] shards (1 when not given)."""
    from ..prediction.store import ChunkPlan

    shards = min(values.get("shards") or 1, len(cover.x))
    if not 1 <= shards <= MAX_ARRAY_SIZE:
        raise UserError(f"--shards must be 1..{MAX_ARRAY_SIZE:,} (Batch's largest array job)")
    if values["checkpoint_every"] < 1:
        raise UserError("--checkpoint-every must be at least 1")
    return ChunkPlan(cover, cover.shard_ranges(shards), values["checkpoint_every"])


def _largest_shard(cover, ranges):
    cols, counts = cover.column_counts()
    return max(int(counts[(cols >= a) & (cols < b)].sum()) for a, b in ranges)


def _check_pilot_options(values, pilot_tiles, from_pilot, tiles_per_second, bucket, prefix):
    """--pilot and --from-pilot against the options they make no sense with: one line, exit 2."""
    if pilot_tiles and from_pilot:
        raise UserError("--pilot measures a rate and --from-pilot uses one: give one of them")
    if pilot_tiles and values.get("shards"):
        raise UserError("--pilot scores its tiles in one job on one worker: leave out --shards")
    if pilot_tiles and values.get("out"):
        raise UserError(f"--pilot writes into its own store (s3://{bucket}/{prefix}results), never a production "
                        "store: leave out --out")
    if from_pilot and tiles_per_second:
        raise UserError(f"--from-pilot {from_pilot} takes the rate the pilot measured: leave out --tiles-per-second")
    if from_pilot and not _NAME.match(from_pilot):
        raise UserError(f"--from-pilot names a pilot job (letters, digits, - and _): not {from_pilot!r}")


def _out(out, bucket, default_key):
    if out is None:
        return f"s3://{bucket}/{default_key}"
    if not str(out).lower().startswith("s3://"):
        raise UserError(f"--out must be s3://{bucket}/... for a remote job (the workers write there), not {out}")
    return str(out).rstrip("/")


def _input(aws, value, bucket, kind, top_level_only=False):
    from .transfer import upload_input

    if str(value).lower().startswith("s3://"):
        return str(value)
    return upload_input(aws, value, bucket, "", kind, top_level_only=top_level_only)


def _argv(actions, values):
    """Options back into a command line: the local command's own, with S3 URIs in place of local paths."""
    argv = []
    for action in actions:
        value = values.get(action.dest)
        if value is None or value is False or value == action.default:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def _confirm(yes, events, confirm):
    if yes:
        return
    if events:
        raise UserError("remote submit with --events needs --yes (the estimate is in the log event above)")
    if confirm is None:
        if not sys.stdin.isatty():
            raise UserError("remote submit: confirm with --yes (no terminal to ask on)")
        confirm = input
    if confirm("submit? [y/N] ").strip().lower() not in ("y", "yes"):
        raise UserError("not submitted")


# ---------------------------------------------------------------------------------------------
# status, logs, cancel, fetch
# ---------------------------------------------------------------------------------------------
def describe(aws, job_ids):
    jobs = []
    for i in range(0, len(job_ids), 100):
        jobs += aws.call("batch", "describe_jobs", what="the job", jobs=job_ids[i:i + 100])["jobs"]
    return jobs


def _describe_one(aws, record):
    jobs = describe(aws, [record["job_id"]])
    if not jobs:
        raise UserError(f"Batch knows no job {record['job_id']} in {aws.region} (Batch forgets jobs a week or "
                        "more after they end)")
    return jobs[0]


def log_tail(aws, record, job, n):
    """The last n log lines of a job's latest attempt ([] when it has none yet)."""
    from botocore.exceptions import ClientError

    container = job.get("container") or {}
    stream = container.get("logStreamName") or next(
        (a.get("container", {}).get("logStreamName") for a in reversed(job.get("attempts") or [])
         if a.get("container", {}).get("logStreamName")), None)
    if not stream or n <= 0:
        return []
    group = ((container.get("logConfiguration") or {}).get("options") or {}).get("awslogs-group") \
        or record.get("log_group") or "/aws/batch/job"
    try:
        events = aws.client("logs").get_log_events(logGroupName=group, logStreamName=stream, limit=n,
                                                   startFromHead=False)["events"]
    except ClientError as exc:
        if "ResourceNotFound" in str(exc):
            return []
        from .aws import raise_user_error

        raise_user_error(exc, f"the log group {group}", aws.region)
        raise
    return [e["message"].rstrip("\n") for e in events][-n:]


def _attempts(job):
    return [{"exit_code": a.get("container", {}).get("exitCode"), "reason": a.get("container", {}).get("reason"),
             "status_reason": a.get("statusReason")} for a in job.get("attempts") or []]


def _why(job):
    """One line: why a job failed, from its last attempt or its own status reason."""
    attempts = _attempts(job)
    last = attempts[-1] if attempts else {}
    parts = [p for p in (last.get("status_reason"), last.get("reason"), job.get("statusReason")) if p]
    reason = "; ".join(dict.fromkeys(parts)) or "no reason given"
    if last.get("exit_code") is not None:
        reason += f" (exit code {last['exit_code']})"
    return " ".join(redact(reason).split())


def status(aws, record, tail=10, now_ms=None):
    """A status report: (text, fields, failure line or None)."""
    job = _describe_one(aws, record)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    fields = {"name": record["name"], "kind": record.get("kind"), "job_id": job["jobId"], "status": job["status"],
              "status_reason": job.get("statusReason"), "attempts": _attempts(job)}
    lines = [f"{record['name']} ({record.get('kind') or 'job'}, {job['jobId']}): {job['status']}"
             + (f" - {job['statusReason']}" if job.get("statusReason") else "")]
    summary = (job.get("arrayProperties") or {}).get("statusSummary")
    size = (job.get("arrayProperties") or {}).get("size")
    if summary:
        fields["children"] = {k: v for k, v in summary.items() if v}
        fields["size"] = size
        lines.append(f"children: {fields['size']} (" + ", ".join(f"{k} {v}" for k, v in fields["children"].items())
                     + ")")
    # the workers: every child's attempts (an array parent has none of its own)
    children = describe(aws, [f"{job['jobId']}:{i}" for i in range(size)]) if size else [job]
    fields["waiting"] = _waiting(children)
    if fields["waiting"]:
        w = fields["waiting"]
        who = f"{w['jobs']} child{'ren' * (w['jobs'] != 1)}" if size else "the job"
        blocked = (w.get("reason") or "").startswith(("CAPACITY:", "MISCONFIGURATION:"))
        lines.append(f"waiting for capacity: {who} RUNNABLE"
                     + (f"; Batch says: {w['reason']}" if w.get("reason") else "")
                     + ("" if blocked else "; spot GPU instances being found, or a vCPU quota too small")
                     + " (`tower-detector remote setup --check`)")
    running = sum(1 for c in children if c.get("status") == "RUNNING")
    spans = watch.worker_intervals(children, now_ms)
    progress = None
    if record.get("store"):
        fields["progress"] = progress = _progress(record["store"])
        if progress:
            p = progress
            lines.append(f"results: {p['chunks_done']:,}/{p['chunks_total']:,} chunks, {p['tiles_done']:,}/"
                         f"{p['tiles_total']:,} tiles done ({p['tiles_done'] / max(p['tiles_total'], 1):.0%}); "
                         f"failed: {p['tiles_failed_permanent']:,} for good (no imagery there, unreadable), "
                         f"{p['tiles_failed_transient']:,} to retry (imagery unreachable)")
    if record.get("kind") == "predict":
        fields["rate"] = _rate(record, progress, spans, now_ms, running)
        lines += _rate_lines(fields["rate"])
    fields["cost"] = _cost(record, spans)
    if fields["cost"]["worker_hours"]:
        c = fields["cost"]
        lines.append(f"cost so far: about ${c['dollars']:,.2f} ({c['worker_hours']:,.2f} worker-hours x "
                     f"${c['spot_price']:.2f}/h, the submit-time spot price; an estimate: it leaves out instance "
                     "boot and idle time, and spot prices move)")
    counts = watch.failure_counts(children)
    fields["failures"] = {"tiles": {"permanent": progress["tiles_failed_permanent"],
                                    "transient": progress["tiles_failed_transient"],
                                    "reasons": progress.get("failures") or {}} if progress else None, **counts}
    if counts["attempts"] or counts["children"]:
        def kinds(counted):
            return ", ".join(f"{n} {watch.KIND_TEXT[k]}" for k, n in counted.items()) or "none"

        lines.append(f"failed attempts: {kinds(counts['attempts'])}"
                     + (f"; children failed for good: {kinds(counts['children'])}" if counts["children"] else ""))
    if record.get("pilot"):
        lines += _pilot_status(aws, record, fields)
    failure = None
    failed = [c for c in children if c.get("status") == "FAILED"][:3] if size else (
        [job] if job["status"] == "FAILED" else [])
    fields["failed"] = []
    for f in failed:
        index = (f.get("arrayProperties") or {}).get("index")
        if index is None and ":" in f["jobId"]:  # a child's id is PARENT:INDEX
            index = int(f["jobId"].rsplit(":", 1)[1])
        who = f"child {index}" if index is not None else "job"
        attempts, why, logs = len(f.get("attempts") or []), _why(f), log_tail(aws, record, f, tail)
        fields["failed"].append({"index": index, "attempts": attempts, "reason": why, "log_tail": logs})
        lines.append(f"{who} failed after {attempts} attempt{'s' * (attempts != 1)}: {why}")
        if logs:
            lines += [f"  last log lines of {who}:"] + [f"    {line}" for line in logs]
    if job["status"] == "FAILED":
        first = fields["failed"][0] if fields["failed"] else {"attempts": len(job.get("attempts") or []),
                                                              "reason": _why(job)}
        failure = (f"remote job {record['name']} FAILED"
                   + (f": {summary.get('FAILED')} of {fields.get('size')} children failed" if summary else "")
                   + f"; after {first['attempts']} attempt{'s' * (first['attempts'] != 1)}: {first['reason']}")
    return "\n".join(lines), fields, failure


def _pilot_status(aws, record, fields):
    """A pilot's figures, once it has written them, and the estimate of the full run they give."""
    from .pilot import pilot_text, read_pilot

    p = record["pilot"]
    figures = read_pilot(aws, record["bucket"], record["name"])
    if figures is None:
        if fields.get("status") in ("SUCCEEDED", "FAILED"):
            return [f"pilot: ended without figures ({p['report']} is missing): it failed before its tiles were "
                    "scored; see why below or in `remote logs`"]
        return [f"pilot: {p['tiles']:,} tiles of the area's {p['area_tiles']:,}; its figures come when it ends "
                f"({p['report']})"]
    fields["pilot"] = figures
    lines = pilot_text(figures).splitlines()
    if figures.get("failure") or not figures.get("tiles_per_second_per_view"):
        return lines
    fields["full_run"] = full_run_estimate(figures, record)
    return lines + [f"for the whole area: `remote submit predict` with the pilot's model, zoom, imagery and "
                    f"precision and --from-pilot {record['name']}:"] + [
        f"  {line}" for line in estimate_text(fields["full_run"]).splitlines()]


def full_run_estimate(figures, record):
    """The estimate of the full run of a pilot's area at the pilot's rate and views, with shards sized as submit
    would size them (the chunk count approximate: each shard's last chunk may be short)."""
    from .capacity import size_shards
    from .pilot import rate_source

    p, capacity = record["pilot"], (record.get("estimate") or {}).get("capacity")
    rate, views = figures["tiles_per_second_per_view"], figures.get("views") or 1
    sizing = size_shards(p["area_tiles"], rate, views=views, timeout_hours=p["timeout_hours"],
                         workers=(capacity or {}).get("workers") or 1, startup_minutes=STARTUP_MINUTES,
                         max_shards=MAX_ARRAY_SIZE, columns=p["area_columns"])
    chunks = math.ceil(p["area_tiles"] / p["checkpoint_every"]) + sizing["shards"] - 1
    return estimate_predict(p["area_tiles"], sizing["shards"], chunks, tiles_per_second=rate, views=views,
                            capacity=capacity, rate=rate_source(figures, record["name"]), sizing=sizing,
                            timeout_hours=p["timeout_hours"])


def _waiting(children):
    """{jobs, reason} when jobs wait in RUNNABLE (Batch's statusReason of a blocked one when it gives one; it
    names CAPACITY:... or MISCONFIGURATION:... causes), else None."""
    waiting = [c for c in children if c.get("status") == "RUNNABLE"]
    if not waiting:
        return None
    reasons = [c["statusReason"] for c in waiting if c.get("statusReason")]
    blocked = [r for r in reasons if r.startswith(("CAPACITY:", "MISCONFIGURATION:"))]
    reason = (blocked or reasons or [None])[0]
    return {"jobs": len(waiting), "reason": " ".join(redact(reason).split()) if reason else None}


def _rate(record, progress, spans, now_ms, running):
    """Tiles done by this job, its rates, and the ETA with the workers running now (watch.py)."""
    done = progress["tiles_done"] if progress else 0
    this_job = max(0, done - (record.get("tiles_done_at_submit") or 0))
    rate = watch.job_rate(this_job, spans, now_ms, running)
    left = (progress["tiles_total"] - done) if progress else record.get("tiles")
    eta = watch.eta_seconds(left, rate["tiles_per_worker_second"], running) if left is not None else None
    return {"tiles_this_job": this_job, "tiles_left": left, "workers_running": running, "eta_seconds": eta, **rate}


def _rate_lines(r):
    if r["tiles_per_second"] is None:
        return [f"rate: no attempt has started yet; {r['tiles_left'] or 0:,} tiles to go"]
    line = (f"rate: {r['tiles_per_second']:,.1f} tiles/s over the job so far ({r['tiles_this_job']:,} tiles in "
            f"{watch.duration_text(r['elapsed_seconds'])}); {r['tiles_per_worker_second'] or 0:,.1f} tiles/s per "
            "worker")
    if r["tiles_left"] == 0:
        return [line, "ETA: done"]
    if r["eta_seconds"] is None:
        return [line, f"ETA: unknown ({r['tiles_left'] or 0:,} tiles left, "
                + ("no worker running now)" if not r["workers_running"] else "no tile done yet)")]
    return [line, f"ETA: about {watch.duration_text(r['eta_seconds'])} for {r['tiles_left']:,} tiles left with "
            f"the {r['workers_running']} worker{'s' * (r['workers_running'] != 1)} running now"]


def _cost(record, spans):
    """The compute cost so far: worker-hours of every attempt times the spot price the estimate used."""
    price = (record.get("estimate") or {}).get("spot_price") or record.get("spot_price") or DEFAULT_SPOT_PRICE
    hours = watch.worker_hours(spans)
    return {"worker_hours": round(hours, 4), "spot_price": price, "dollars": round(hours * price, 2),
            "estimate": True}


def _progress(store_spec):
    from ..prediction.store import open_store

    try:
        with open_store(store_spec) as store:
            progress = store.progress()
            return {k: v for k, v in progress.items() if k != "shards"}
    except UserError:
        return None  # no worker has started yet


def logs(aws, record, tail=50, child=None):
    """[(label, lines)] for the job, or for each child of an array job (or the one asked for)."""
    job = _describe_one(aws, record)
    size = (job.get("arrayProperties") or {}).get("size")
    if not size:
        if child not in (None, 0):
            raise UserError(f"{record['name']} is not an array job: it has no child {child}")
        return [("job", log_tail(aws, record, job, tail))]
    indexes = [child] if child is not None else list(range(size))
    if any(not 0 <= i < size for i in indexes):
        raise UserError(f"--child must be 0..{size - 1}")
    children = {c["jobId"]: c for c in describe(aws, [f"{job['jobId']}:{i}" for i in indexes])}
    return [(f"child {i}", log_tail(aws, record, children[f"{job['jobId']}:{i}"], tail)) for i in indexes
            if f"{job['jobId']}:{i}" in children]


def retry(aws, record, *, name=None):
    """Resubmit only the failed children of a finished prediction, into the same store: one array job whose child
    i scores the i-th failed shard (TOWER_DETECTOR_SHARDS). Each retried shard scores only its missing chunks
    and the tiles that failed transiently (the store keeps what is done). A job's --rate-limit is shared out
    anew among the retry's children at once."""
    from .worker import SHARD_LIST, format_shards

    if record.get("kind") != "predict" or not record.get("command"):
        raise UserError(f"{record['name']}: remote retry resubmits the failed children of a prediction, by the "
                        "name it was submitted under (see `remote jobs --all`)")
    job = _describe_one(aws, record)
    if job["status"] not in ("SUCCEEDED", "FAILED"):
        raise UserError(f"{record['name']} is {job['status']}: retry it once it has ended (or `remote cancel` it)")
    size = (job.get("arrayProperties") or {}).get("size")
    if size:
        failed = sorted(int(c["jobId"].rsplit(":", 1)[1]) for c in aws.pages(
            "batch", "list_jobs", "jobSummaryList", what="the job's children", arrayJobId=job["jobId"],
            jobStatus="FAILED"))
    else:
        failed = [0] if job["status"] == "FAILED" else []
    if not failed:
        raise UserError(f"{record['name']}: no child failed; nothing to retry")
    command = list(record["command"])
    shards = int(command[command.index("--shards") + 1]) if "--shards" in command else 1
    jobs = load_jobs()

    def taken(candidate):  # here, or in the bucket (a teammate's job, or their retry of this one)
        return candidate in jobs or (record.get("bucket") and aws.call(
            "s3", "list_objects_v2", what=f"s3://{record['bucket']}", Bucket=record["bucket"],
            Prefix=f"jobs/{candidate}/", MaxKeys=1).get("KeyCount"))

    name = name or next(f"{record['name']}-retry{n}" for n in range(1, 10_000)
                        if not taken(f"{record['name']}-retry{n}"))
    if not _NAME.match(name) or taken(name):
        raise UserError(f"--name {name!r}: a new job name (letters, digits, - and _) is needed")
    listed = format_shards(failed)
    share = None
    if record.get("rate_limit") and "--rate-limit" in command:
        # the job's limit shared out among the retry's own children at once (the workers at submit time)
        at_once = min(len(failed), record.get("workers_at_once") or len(failed))
        share = rate_share(record["rate_limit"], at_once)
        command[command.index("--rate-limit") + 1] = str(share)
    env = [{"name": "TOWER_DETECTOR_JOB", "value": name}, {"name": SHARD_LIST, "value": listed}]
    request = dict(jobName=name, jobQueue=job["jobQueue"], jobDefinition=job["jobDefinition"],  # the same image
                   containerOverrides={"command": command, "environment": env},
                   tags={"project": "tower-detector", "job": name}, propagateTags=True)
    if len(failed) > 1:
        request["arrayProperties"] = {"size": len(failed)}
    answer = aws.call("batch", "submit_job", what="the retry", **request)
    # what the store held when the retry was submitted: status counts the retry's own tiles from there
    before = _progress(record["store"]) if record.get("store") else None
    price = (record.get("estimate") or {}).get("spot_price") or record.get("spot_price")
    new = dict(record, name=name, job_id=answer["jobId"], job_arn=answer.get("jobArn"), retry_of=record["name"],
               shards_retried=listed, array_size=len(failed) if len(failed) > 1 else None, estimate=None,
               command=command, rate_limit_per_child=share,
               spot_price=price, tiles_done_at_submit=before["tiles_done"] if before else 0,
               submitted=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    new.pop("shared", None)
    new["profile"] = aws.profile  # whoever retried it: this machine's list keeps their profile
    save_job(new)
    if new.get("bucket"):
        publish_record(aws, new)
    return new, failed, shards


def cancel(aws, record):
    """Terminate the job (queued children are cancelled, running ones stopped: SIGTERM, then SIGKILL). Batch does
    not retry a terminated job. What was written stays: chunks in the store, the synced model folder."""
    job = _describe_one(aws, record)
    if job["status"] in ("SUCCEEDED", "FAILED"):
        return job["status"], False
    aws.call("batch", "terminate_job", what="the job", jobId=job["jobId"],
             reason="cancelled with tower-detector remote cancel")
    return job["status"], True


def fetch(aws, record, out, *, threshold=0.5, yes_threshold=0.97, progress=None, log=None, overwrite=False,
          scores_json=False):
    """predict: merge the S3 store into out/ (heatmap, candidates, the overlay GeoJSON, and with scores_json the
    original project's scores.json, every tile's score: large for a country; a candidates.gpkg already there is
    merged into, its review decisions kept, unless overwrite); train/search:
    download the model or search folder (without the training's resume checkpoints)."""
    from .transfer import list_keys, parse_s3

    os.makedirs(out, exist_ok=True)
    if record.get("kind") == "predict":
        from ..results import merge_results

        return merge_results(record["store"], heatmap=os.path.join(out, "heatmap.tif"),
                             candidates=os.path.join(out, "candidates.gpkg"), threshold=threshold,
                             json_path=os.path.join(out, "scores.json") if scores_json else None,
                             geojson_path=os.path.join(out, "overlay.geojson"), yes_threshold=yes_threshold,
                             progress=progress, log=log, overwrite=overwrite)
    if record.get("kind") not in ("train", "search"):
        raise UserError(f"{record['name']}: fetch needs the job's record (its name, from `remote jobs --all`), not a "
                        "bare Batch id")
    bucket, prefix = parse_s3(record["out"])
    prefix = prefix.rstrip("/") + "/"
    s3 = aws.client("s3")
    skip = re.compile(r"(^|/)(backup|checkpoints)/|^trials/")  # resume state, and every trial of a search
    n = 0
    try:
        keys = [k for k in list_keys(s3, bucket, prefix) if not skip.search(k[len(prefix):])]
    except Exception as exc:
        from .aws import raise_user_error

        raise_user_error(exc, record["out"], aws.region)
        raise
    for key in keys:
        path = os.path.join(out, *key[len(prefix):].split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, key, path)
        n += 1
    if not n:
        raise UserError(f"nothing in {record['out']} yet: the job has not written anything")
    state = os.path.join(out, "best" if record["kind"] == "search" else "", "state.json")
    finished = False
    if os.path.isfile(state):
        with open(state) as f:
            finished = bool(json.load(f).get("finished"))
    return {"files": n, "out": out, "finished": finished}
