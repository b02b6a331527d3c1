"""`tower-detector remote k8s-manifest predict ARGS`: the same worker as an Indexed Job on a Kubernetes cluster the
user already has (no AWS Batch, no stack).

Each pod of the Job runs `tower-detector remote worker predict ARGS --shards N`; Kubernetes gives it its index in
JOB_COMPLETION_INDEX (completionMode: Indexed), which the worker takes as its shard, as it takes
AWS_BATCH_JOB_ARRAY_INDEX on Batch. Inputs and the results store are on S3 (or anything the worker reads by URI).
Secrets (imagery tokens, AWS keys where no pod identity is set up) come from a Kubernetes Secret the user
creates, mapped to the environment; the manifest only names it, so it holds no secret.
--rate-limit R (requests/s for the whole job) is shared out: each pod's command carries R / parallelism, which
holds while no more than --parallelism pods run at once (Kubernetes starts at most that many).
"""

import json
import re

from ..common.errors import UserError
from ..common.redaction import secrets as literal_secrets
from ..pipeline import rate_share
from .worker import REQUIRE_GPU, RETRY_EXIT_CODE

DEFAULT_SECRET = "tower-detector"
CPU_REQUEST = "4"  # as the stack's job definition: tile decoding runs on them
MEMORY_REQUEST = "14Gi"
ATTEMPTS_PER_SHARD = 5  # as the stack's RetryAttempts
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def indexed_job(name, image, argv, shards, *, parallelism=None, secret=DEFAULT_SECRET, namespace=None):
    """The batch/v1 Job (a dict) running `tower-detector remote worker predict argv` once per shard."""
    if not _DNS_LABEL.match(name) or len(name) > 52:  # Job names become pod labels and hostnames
        raise UserError(f"a Kubernetes job name is lower-case letters, digits and - (at most 52): not {name!r}")
    if not _DNS_LABEL.match(secret):
        raise UserError(f"--secret must name a Kubernetes Secret (lower-case letters, digits, -): not {secret!r}")
    if not image or any(c.isspace() for c in image):
        raise UserError("--image must name the worker image the cluster pulls (best pinned: repo@sha256:...)")
    parallelism = min(shards, parallelism or shards)
    labels = {"app.kubernetes.io/name": "tower-detector", "tower-detector/job": name}
    metadata = {"name": name, "labels": labels}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "completionMode": "Indexed",
            "completions": shards,
            "parallelism": parallelism,
            "backoffLimitPerIndex": ATTEMPTS_PER_SHARD - 1,
            "podFailurePolicy": {"rules": [
                # a node drained or reclaimed under the pod: retried, and not counted as an attempt
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                # anything but the worker's "resume me" is a real error (bad input, a bug, no GPU): a retry
                # would repeat it
                {"action": "FailIndex", "onExitCodes": {"containerName": "worker", "operator": "NotIn",
                                                        "values": [RETRY_EXIT_CODE]}},
            ]},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "worker",
                        "image": image,
                        "args": ["remote", "worker", "predict", *argv, "--events"],
                        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"},
                                {"name": "TF_FORCE_GPU_ALLOW_GROWTH", "value": "true"},
                                {"name": REQUIRE_GPU, "value": "1"},  # exit 78 at once if none is seen
                                {"name": "TOWER_DETECTOR_JOB", "value": name}],
                        "envFrom": [{"secretRef": {"name": secret}}],
                        "resources": {"requests": {"cpu": CPU_REQUEST, "memory": MEMORY_REQUEST},
                                      "limits": {"nvidia.com/gpu": 1, "memory": MEMORY_REQUEST}},
                    }],
                },
            },
        },
    }


def manifest(kind, args, actions, *, image, name, parallelism=None, secret=DEFAULT_SECRET, namespace=None):
    """The Indexed Job of `remote submit predict`'s arguments: every input an s3:// (or http) URI, no secret in
    clear, --shards N the Job's completions. Returns (the Job dict, its text)."""
    from .jobs import _argv

    if kind != "predict":
        raise UserError("remote k8s-manifest writes prediction jobs only (predict)")
    values = {a.dest: getattr(args, a.dest, None) for a in actions}
    shards = values.get("shards")
    if not shards or shards < 1:
        raise UserError("remote k8s-manifest needs --shards N (the Job's completions, one pod per shard)")
    if (values.get("area") is None) == (values.get("tiles") is None):
        raise UserError("remote k8s-manifest needs --area or --tiles (one of them), as s3:// URIs")
    for key in ("model", "tiles", "area", "out"):
        value = values.get(key)
        if value is not None and not str(value).lower().startswith("s3://"):
            raise UserError(f"--{key} {value}: the pods read and write by URI: give an s3:// URI (upload it first)")
    if values.get("out") is None:
        raise UserError("remote k8s-manifest needs --out s3://bucket/prefix (the results store)")
    imagery = values.get("imagery") or ""
    if not imagery.lower().startswith(("http://", "https://", "s3://")):
        raise UserError("--imagery must be reachable from the cluster (an http(s) URL template or s3://...)")
    clear = literal_secrets(imagery)
    if clear:
        names = ", ".join(n or "a value with no name" for n in clear)
        raise UserError(f"the imagery spec holds a secret in clear ({names}): put it in the Secret {secret!r} and "
                        "write ${NAME} in its place")
    if values.get("shard") is not None:
        raise UserError("--shard is for one process; the Job gives each pod its shard")
    if values.get("rate_limit"):  # the job's limit shared out among the pods that run at once
        from ..prediction.predict import check_rate_limit

        check_rate_limit(values["rate_limit"], imagery)
        values["rate_limit"] = rate_share(values["rate_limit"], min(shards, parallelism or shards))
    job = indexed_job(name, image, _argv(actions, values), shards, parallelism=parallelism, secret=secret,
                      namespace=namespace)
    return job, json.dumps(job, indent=2) + "\n"

