"""`tower-detector remote ...`: train, search and predict on AWS Batch GPU spot capacity.

    remote setup [--check]                      the AWS side, from the CloudFormation template stack.yaml
    remote secret put NAME                      an imagery token into SSM Parameter Store (SecureString)
    remote submit predict|train|search ARGS     the local command's own arguments; prints an estimate, asks
    remote submit predict ARGS --pilot N        a pilot: N tiles of the area on one worker, measured (pilot.py);
    remote submit predict ARGS --from-pilot P   then the full run, its estimate and shard sizes at P's rate
    remote status|logs|cancel|fetch JOB         by the short name given at submit time (or the Batch job id); a
                                                name not listed here is read from the stack's bucket (--stack)
    remote retry JOB                            only the failed children of an ended prediction, same store
    remote k8s-manifest predict ARGS            the worker as a Kubernetes Indexed Job (kubernetes.py)
    remote jobs [--all]                         the jobs submitted from this machine (--all: and the bucket's)
    remote worker predict|train|search ARGS     what the Batch container runs (written by submit)

Modules: aws.py (sessions, one-line errors), stack.py (setup), capacity.py (workers at once, quotas, prices, shard
sizes), jobs.py (submit, status, job records, ...), pilot.py (the pilot's sample and figures), watch.py (status'
rate, ETA, cost and failure arithmetic), transfer.py (S3 inputs and output sync), worker.py (the container side).
boto3 is imported only when a remote command runs.
"""

import argparse

from ..common.errors import UserError

_STAGE_ACTIONS = {}  # kind -> the argparse actions of its stage's arguments in `remote submit KIND`
_K8S_ACTIONS = {}  # the same for `remote k8s-manifest KIND`


def add_remote_commands(sub, command):
    """Register `remote` on the CLI's subparsers; `command(name, func, help)` is cli.build_parser's helper.
    `remote submit KIND` takes the arguments of the stage KIND (pipeline.STAGES)."""
    from ..pipeline import COUNT, NON_NEGATIVE, POSITIVE, STAGE, STAGES

    rp = command("remote", _cmd_remote, "Run train, search and predict on AWS Batch GPU spot instances.")
    rsub = rp.add_subparsers(dest="remote_action", metavar="ACTION")

    def action(parent, name, func, help_text):
        sp = parent.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--events", action="store_true", help="print JSON-lines events on stdout (for the QGIS plugin)")
        sp.set_defaults(func=func)
        return sp

    def aws_options(sp, stack=True):
        sp.add_argument("--profile", help="AWS named profile (default: the standard credential chain)")
        sp.add_argument("--region", help="AWS region (default: the profile's, or AWS_REGION)")
        if stack:
            sp.add_argument("--stack", default="tower-detector", help="CloudFormation stack name (default %(default)s)")

    sp = action(rsub, "setup", _cmd_setup, "Create or update the AWS side (CloudFormation), or --check it.")
    aws_options(sp)
    sp.add_argument("--check", action="store_true", help="only validate the template and report on the stack")
    sp.add_argument("--bucket", help="name of the results bucket (new stacks; default: chosen by CloudFormation)")
    sp.add_argument("--vpc", help="VPC id (default: the region's default VPC)")
    sp.add_argument("--subnets", help="comma-separated subnet ids with internet access (default: the VPC's)")
    sp.add_argument("--instance-types", help="comma-separated GPU instance types (default g4dn/g5 xlarge, 2xlarge)")
    sp.add_argument("--max-vcpus", type=COUNT, help="most vCPUs running at once (default 64: 16 workers)")
    sp.add_argument("--root-volume-gib", type=COUNT, help="root volume of each instance in GiB (default 100)")
    sp.add_argument("--image-tag", help="worker image tag in the stack's ECR repository (default latest)")
    sp.add_argument("--alert-email", metavar="ADDRESS", help="e-mail this address when a job fails or is blocked "
                    "in RUNNABLE (SNS asks it to confirm first; docs/aws.md); '' removes the alert (default: as is)")
    sp.add_argument("--template", help="a CloudFormation template instead of the packaged stack.yaml")

    sp = action(rsub, "secret", _cmd_remote, "Store imagery secrets in SSM Parameter Store.")
    ssub = sp.add_subparsers(dest="secret_action", metavar="ACTION")
    sp = action(ssub, "put", _cmd_secret_put, "Store a secret (read from stdin or a prompt, never from the command "
                "line) as a SecureString; imagery specs refer to it as ${NAME}.")
    sp.add_argument("name", help="the secret's name, also the environment variable the worker gets (e.g. TOKEN)")
    aws_options(sp)

    sp = action(rsub, "submit", _cmd_remote, "Submit a remote job.")
    ksub = sp.add_subparsers(dest="kind", metavar="KIND")
    for stage in (s for s in STAGES if s.remote):
        kind = stage.name
        ksp = action(ksub, kind, _cmd_submit, f"Run `tower-detector {kind}` on AWS Batch; the same arguments, "
                     "with local paths uploaded to the stack's bucket (or s3:// URIs in it).")
        _STAGE_ACTIONS[kind] = stage.arguments(ksp, remote=True)
        aws_options(ksp)
        ksp.add_argument("--name", help="a short job name for status/logs/fetch (default KIND-DATE-TIME)")
        ksp.add_argument("--yes", action="store_true", help="submit without asking (needed with --events)")
        ksp.add_argument("--spot-price", type=NON_NEGATIVE,
                         help="$ per worker-hour for the estimate (default: the spot price history of the stack's "
                              "instance types, else the assumed prices in docs/aws.md)")
        ksp.add_argument("--timeout-hours", type=POSITIVE,
                         help="stop an attempt after this long (default: the stack's)")
        if kind == "predict":
            ksp.add_argument("--tiles-per-second", type=POSITIVE,
                             help="throughput per GPU and view for the estimate and the shard sizes (default 150: an "
                                  "assumption; measure it with --pilot; docs/aws.md)")
            ksp.add_argument("--pilot", type=COUNT, metavar="N",
                             help="a pilot: score N tiles spread evenly over the area in one job on one GPU worker, "
                                  "into the job's own store, and measure tiles/s, the imagery's latency and errors, "
                                  "and GPU use (`remote status NAME` shows them)")
            ksp.add_argument("--from-pilot", metavar="PILOT",
                             help="take the tiles/s that the finished pilot PILOT measured (same model, zoom, imagery "
                                  "and precision) for the estimate and the shard sizes")

    for name, func, text in (("status", _cmd_status, "Status of a remote job: children, progress, failures."),
                             ("cancel", _cmd_cancel, "Stop a remote job (what it wrote is kept)."),
                             ("retry", _cmd_retry, "Resubmit only the failed children of an ended prediction, into "
                                                   "the same store."),
                             ("logs", _cmd_logs, "The last log lines of a remote job (each child of an array job)."),
                             ("fetch", _cmd_fetch, "Get a job's results: merged outputs of a prediction, or the "
                                                   "model/search folder.")):
        sp = action(rsub, name, func, text)
        sp.add_argument("job", help="the job's name from submit (see `remote jobs --all`), or its Batch job id")
        aws_options(sp)  # --stack: a job submitted elsewhere is found by its record in the stack's bucket
        if name in ("status", "logs"):
            sp.add_argument("--tail", type=int, default=10 if name == "status" else 50, help="log lines to show")
        if name == "logs":
            sp.add_argument("--child", type=int, help="only this child of an array job")
        if name == "retry":
            sp.add_argument("--name", help="the retry's job name (default JOB-retryN)")
        if name == "fetch":
            sp.add_argument("--out", required=True, help="local folder to write into")
            sp.add_argument("--threshold", type=float, default=0.5, help="candidate score cut (predict)")
            sp.add_argument("--yes-threshold", type=float, default=0.97, help="'Yes' band of the overlay (predict)")
            sp.add_argument("--overwrite", action="store_true", help="write candidates.gpkg afresh, discarding its "
                            "review decisions (by default a fetch merges into it by tile)")
            sp.add_argument("--scores-json", action="store_true", help="also write scores.json, every tile's score "
                            "in the original project's format (predict; large: about 30 bytes a tile)")

    sp = action(rsub, "k8s-manifest", _cmd_remote, "Write a Kubernetes Indexed Job that runs the worker on a "
                "cluster you have (no AWS Batch).")
    ksub = sp.add_subparsers(dest="kind", metavar="KIND")
    ksp = action(ksub, "predict", _cmd_k8s_manifest, "An Indexed Job of one pod per shard scoring into an S3 store: "
                 "predict's arguments, with s3:// URIs; --shards N is the Job's completions.")
    _K8S_ACTIONS["predict"] = STAGE["predict"].arguments(ksp, remote=True)
    ksp.add_argument("--image", required=True, help="the worker image the cluster pulls (best pinned: repo@sha256:...)")
    ksp.add_argument("--name", required=True, help="the Job's name (lower-case letters, digits, -)")
    ksp.add_argument("--parallelism", type=COUNT, help="pods at once (default: one per shard)")
    ksp.add_argument("--secret", default="tower-detector", help="the Kubernetes Secret mapped to the pods' "
                     "environment: imagery tokens (${NAME} in --imagery), AWS keys (default %(default)s)")
    ksp.add_argument("--namespace", help="the Job's namespace (default: kubectl's)")
    ksp.add_argument("--manifest", help="write the manifest here (default: print it)")

    sp = action(rsub, "jobs", _cmd_jobs, "The remote jobs submitted from this machine (--all: and those in the "
                "stack's bucket, submitted by anyone).")
    aws_options(sp)
    sp.add_argument("--all", action="store_true", help="also list the job records in the stack's bucket")
    sp = action(rsub, "worker", _cmd_worker, "What a Batch container runs (written by `remote submit`).")
    sp.add_argument("--pilot", metavar="S3_URI", help="predict as a pilot: write its figures to this pilot.json")
    sp.add_argument("argv", nargs=argparse.REMAINDER, help="predict|train|search and its arguments")


def _aws(args, record=None):
    from .aws import Aws

    record = record or {}
    return Aws(profile=args.profile or record.get("profile"), region=args.region or record.get("region"))


def _find(args):
    """The job's record: from this machine's list, else from the stack's bucket (a teammate's job)."""
    from .jobs import find_job

    def bucket():
        from .stack import stack_outputs

        aws = _aws(args)
        return aws, stack_outputs(aws, args.stack)["Bucket"]

    return find_job(args.job, bucket_lookup=bucket)


def _cmd_remote(args, rep):
    raise UserError("remote: give an action (setup, secret put, submit, status, logs, cancel, retry, fetch, "
                    "k8s-manifest, jobs; see --help)")


def _cmd_setup(args, rep):
    from .stack import setup

    summary = setup(_aws(args), args.stack, bucket=args.bucket, vpc=args.vpc, subnets=args.subnets,
                    instance_types=args.instance_types, max_vcpus=args.max_vcpus, image_tag=args.image_tag,
                    root_volume_gib=args.root_volume_gib, alert_email=args.alert_email,
                    template=args.template, check=args.check, log=rep.log)
    lines = [f"stack {summary['stack']} in {summary['region']}: {summary['action']}"]
    lines += [f"  {k}: {v}" for k, v in sorted(summary["outputs"].items())]
    lines += [f"  {line}" for note in summary.get("notes", []) for line in note.splitlines()]
    lines += [f"  problem: {p}" for p in summary["problems"]]
    rep.result("\n".join(lines), **summary)
    if summary["problems"]:
        raise UserError(f"stack {summary['stack']}: {summary['problems'][0]}"
                        + (f" (and {len(summary['problems']) - 1} more)" if len(summary["problems"]) > 1 else ""))


def _cmd_secret_put(args, rep):
    from .jobs import put_secret, read_secret_value

    aws = _aws(args)
    name, version = put_secret(aws, args.stack, args.name, read_secret_value())
    rep.result(f"stored {name} (SecureString, version {version}); refer to it as ${{{args.name}}} in --imagery",
               parameter=name, version=version)


def _cmd_submit(args, rep):
    from .jobs import submit

    record = submit(_aws(args), args.kind, args, _STAGE_ACTIONS[args.kind], stack=args.stack, name=args.name,
                    yes=args.yes, events=args.events, log=rep.log)
    size = f" ({record['array_size']} children)" if record.get("array_size") else ""
    rep.result(f"submitted {record['name']}: Batch job {record['job_id']}{size}; output {record['out']}\n"
               f"follow it with: tower-detector remote status {record['name']}",
               **{k: record[k] for k in ("name", "kind", "job_id", "out", "estimate", "region")},
               array_size=record.get("array_size"))


def _cmd_status(args, rep):
    from .jobs import status

    record = _find(args)
    text, fields, failure = status(_aws(args, record), record, tail=args.tail)
    rep.result(text, **fields)
    if failure:
        raise UserError(failure)


def _cmd_cancel(args, rep):
    from .jobs import cancel

    record = _find(args)
    was, done = cancel(_aws(args, record), record)
    text = (f"{record['name']}: terminated (was {was}); what it wrote is kept" if done
            else f"{record['name']} had already ended ({was}): nothing to cancel")
    rep.result(text, name=record["name"], was=was, terminated=done)


def _cmd_retry(args, rep):
    from .jobs import retry

    record = _find(args)
    new, failed, shards = retry(_aws(args, record), record, name=args.name)
    share = (f"; --rate-limit {new['rate_limit']:g} shared by its children: {new['rate_limit_per_child']:g} "
             "requests/s each" if new.get("rate_limit_per_child") else "")
    rep.result(f"resubmitted {len(failed)} failed shard{'s' * (len(failed) != 1)} of {shards} "
               f"({new['shards_retried']}) of {record['name']} as {new['name']}: Batch job {new['job_id']}, into "
               f"{new['store']}{share}\nfollow it with: tower-detector remote status {new['name']}",
               name=new["name"], job_id=new["job_id"], retry_of=record["name"], shards=failed, store=new["store"],
               rate_limit_per_child=new.get("rate_limit_per_child"))


def _cmd_logs(args, rep):
    from .jobs import logs

    record = _find(args)
    parts = logs(_aws(args, record), record, tail=args.tail, child=args.child)
    lines = []
    for label, part in parts:
        if len(parts) > 1:
            lines.append(f"== {label} ==")
        lines += part or ["(no log lines yet)"]
    rep.result("\n".join(lines), logs={label: part for label, part in parts})


def _cmd_fetch(args, rep):
    from .jobs import fetch

    record = _find(args)
    summary = fetch(_aws(args, record), record, args.out, threshold=args.threshold, yes_threshold=args.yes_threshold,
                    progress=rep.progress, log=rep.log, overwrite=args.overwrite, scores_json=args.scores_json)
    if record.get("kind") == "predict":
        from ..cli import merge_text

        text = (f"{summary['scored']:,} tiles scored, {summary['failed']:,} failed"
                + ("" if summary["complete"] else f", {summary['tiles_missing']:,} not scored yet (job unfinished)")
                + f"; {summary['candidates']:,} candidates at or above {summary['threshold']}\n"
                + merge_text(summary["merge"]) + "\n"
                + "\n".join(f"  {kind}: {path}" for kind, path in summary["outputs"].items()))
    else:
        text = f"{summary['files']} files into {args.out}" + ("" if summary["finished"] else " (not finished yet)")
    rep.result(text, **summary)


def _cmd_k8s_manifest(args, rep):
    from ..common.atomic import atomic_file
    from ..pipeline import rate_share
    from .kubernetes import manifest

    job, text = manifest(args.kind, args, _K8S_ACTIONS[args.kind], image=args.image, name=args.name,
                         parallelism=args.parallelism, secret=args.secret, namespace=args.namespace)
    if args.manifest:
        with atomic_file(args.manifest) as f:
            f.write(text)
        at_once = job["spec"]["parallelism"]
        share = (f" (--rate-limit {args.rate_limit:g}: {rate_share(args.rate_limit, at_once):g} requests/s each)"
                 if args.rate_limit else "")
        summary = (f"wrote {args.manifest}: Indexed Job {args.name}, {job['spec']['completions']} shards, "
                   f"{at_once} at once{share}; run it with: kubectl apply -f {args.manifest}")
    else:
        summary = text.rstrip("\n")
    rep.result(summary, manifest=job, path=args.manifest)


def _cmd_jobs(args, rep):
    from .jobs import load_jobs

    jobs = load_jobs()
    for r in jobs.values():
        r["where"] = "here"
    if args.all:
        from .jobs import shared_records
        from .stack import stack_outputs

        aws = _aws(args)
        for r in shared_records(aws, stack_outputs(aws, args.stack)["Bucket"]):
            if r["name"] in jobs:
                jobs[r["name"]]["where"] = "here+bucket"
            else:
                jobs[r["name"]] = dict(r, where="bucket")
    jobs = sorted(jobs.values(), key=lambda r: r.get("submitted", ""))
    text = "\n".join(f"{r['name']:<28} {r.get('kind') or '':<8} {r.get('submitted', '')}  {r.get('region', '')}  "
                     f"{r.get('job_id', '')}" + ("  (bucket)" if r["where"] == "bucket" else "") for r in jobs) \
        or ("no remote jobs here or in the stack's bucket" if args.all else "no remote jobs submitted from here")
    rep.result(text, jobs=[{k: r.get(k) for k in ("name", "kind", "job_id", "region", "submitted", "out", "where")}
                           for r in jobs])


def _cmd_worker(args, rep):
    from .worker import run_worker

    run_worker(args.argv, rep, pilot=args.pilot)
