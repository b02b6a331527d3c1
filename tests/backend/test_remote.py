"""`tower-detector remote`: AWS jobs against moto's server on loopback (S3, SSM, Batch, CloudFormation, IAM, EC2,
ECR, CloudWatch Logs and STS on one endpoint).

moto runs no containers: in its "use_docker": false mode a Batch job is recorded and marked done at once. So the
Batch side of a prediction is simulated as Batch would run it: the submitted job's own command, in separate
processes, with the environment a container gets (AWS_BATCH_JOB_ARRAY_INDEX, the secret injected as a variable).
Where moto cannot produce an AWS answer (a spot quota, a LimitExceededException), the test stubs that one
operation at botocore's level, marked STUB.
"""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pytest

from tests.fakes.tileserver import TileServer
from tests.fakes.training import TINY_TRAINING
from tower_detector.cli import main
from tower_detector.prediction.store import open_store
from tower_detector.remote.stack import TEMPLATE

ACCOUNT = "123456789012"  # moto's
SECRET = "s3cr3t-Imagery-T0ken-7f9e21"  # must appear in no S3 object, log line or event


def cli(*args):
    """Run the CLI in this process: (exit code, events, everything printed)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    events = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    return rc, events, out.getvalue() + err.getvalue()


def fails(*args, message):
    """A bad input: exit 2 and one line (the last event, an error) containing `message`."""
    rc, events, text = cli(*args, "--events")
    assert rc == 2, text[-2000:]
    assert events[-1]["event"] == "error" and "\n" not in events[-1]["message"], events[-1]
    assert message in events[-1]["message"], events[-1]["message"]
    return events[-1]["message"], events


def moto_template():
    """The packaged template, plus what moto alone needs. MOTO ONLY: moto's Batch compute environment requires an
    explicit service role; on AWS the stack leaves it out and Batch uses its service-linked role."""
    from cfnlint.decode import decode_str

    with open(TEMPLATE) as f:
        template, _ = decode_str(f.read())
    template["Resources"]["MotoBatchServiceRole"] = {
        "Type": "AWS::IAM::Role",
        "Properties": {"AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "batch.amazonaws.com"}, "Action": "sts:AssumeRole"}]}}}
    template["Resources"]["ComputeEnvironment"]["Properties"]["ServiceRole"] = {
        "Fn::GetAtt": ["MotoBatchServiceRole", "Arn"]}
    return template


@pytest.fixture(scope="module")
def remote(s3, tmp_path_factory):
    """The stack `td` deployed by `remote setup` on moto, a job list of our own, and worker scratch space."""
    import boto3
    import requests

    config = f"{s3.meta.endpoint_url}/moto-api/config"
    requests.post(config, json={"batch": {"use_docker": False}}, timeout=10).raise_for_status()
    work = tmp_path_factory.mktemp("remote")
    template = work / "moto-stack.json"
    template.write_text(json.dumps(moto_template()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOWER_DETECTOR_HOME", str(work / "home"))
        mp.setenv("TOWER_DETECTOR_WORK", str(work / "worker"))
        rc, events, text = cli("remote", "setup", "--stack", "td", "--template", template, "--events")
        assert rc == 0, text[-3000:]
        outputs = events[-1]["outputs"]
        push_image(outputs["RepositoryUri"], "first")
        yield {"outputs": outputs, "bucket": outputs["Bucket"], "template": template, "work": work,
               "batch": boto3.client("batch"), "logs": boto3.client("logs"), "s3": s3}
    requests.post(config, json={"batch": {"use_docker": True}}, timeout=10)


def push_image(repository_uri, marker, tag="latest"):
    """A worker image pushed to ECR under `tag` (what `docker push` does); its digest follows `marker` (moto's
    digest is that of the manifest's layers). Returns the digest."""
    import boto3

    ecr, repo = boto3.client("ecr"), repository_uri.split("/", 1)[1]
    layer = {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1,
             "digest": "sha256:" + marker.encode().hex().ljust(64, "0")[:64]}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "layers": [layer]}
    try:
        ecr.put_image(repositoryName=repo, imageTag=tag, imageManifest=json.dumps(manifest))
    except ecr.exceptions.ImageAlreadyExistsException:
        pass  # the same image under the same tag
    return ecr.describe_images(repositoryName=repo, imageIds=[{"imageTag": tag}])["imageDetails"][0]["imageDigest"]


def moto_job(job_id):
    """moto's own record of a Batch job (this process runs the server), to put it in states moto never reaches."""
    from moto.batch.models import batch_backends

    return batch_backends[ACCOUNT]["us-east-1"]._jobs[job_id]


def put_logs(remote, job_id, lines):
    """Log lines for a job's stream, where the awslogs driver would have written them."""
    stream = remote["batch"].describe_jobs(jobs=[job_id])["jobs"][0]["container"]["logStreamName"]
    logs = remote["logs"]
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_stream(logGroupName=remote["outputs"]["LogGroup"], logStreamName=stream)
    logs.put_log_events(logGroupName=remote["outputs"]["LogGroup"], logStreamName=stream,
                        logEvents=[{"timestamp": int(time.time() * 1000) + i, "message": line} for i, line in
                                   enumerate(lines)])


# ---------------------------------------------------------------------------------------------
# the stack
# ---------------------------------------------------------------------------------------------
RETRY_RULES = [{"OnStatusReason": "Host EC2*", "Action": "RETRY"},
               {"OnExitCode": "75", "Action": "RETRY"},
               {"OnStatusReason": "Task failed to start*", "Action": "RETRY"},
               {"OnReason": "CannotPullContainerError*", "Action": "RETRY"},
               {"OnReason": "*", "Action": "EXIT"}]


def batch_decides(rules, *, status_reason=None, reason=None, exit_code=None):
    """What Batch does with a failed attempt, as its documentation states it: the first rule whose every condition
    matches decides (a condition is a literal, or a prefix ending in *); when none matches, it retries."""
    def matches(pattern, value):
        if value is None:
            return pattern == "*"
        return str(value).startswith(pattern[:-1]) if pattern.endswith("*") else str(value) == pattern

    for rule in rules:
        conditions = {"OnStatusReason": status_reason, "OnReason": reason, "OnExitCode": exit_code}
        if all(matches(rule[key], value) for key, value in conditions.items() if key in rule):
            return rule["Action"]
    return "RETRY"


def test_retry_rules_retry_start_up_failures_and_spot_and_nothing_else():
    from cfnlint.decode import decode_str

    from tower_detector.remote.worker import NO_GPU_EXIT_CODE, RETRY_EXIT_CODE

    with open(TEMPLATE) as f:
        rules = decode_str(f.read())[0]["Resources"]["JobDefinition"]["Properties"]["RetryStrategy"]["EvaluateOnExit"]
    assert len(rules) <= 5  # Batch's limit on evaluateOnExit
    for rule in rules:  # Batch's pattern syntax: a literal with at most one *, at the end; exit codes are digits
        for key, pattern in rule.items():
            if key != "Action":
                assert "*" not in pattern[:-1] and len(pattern) <= 512, rule
                assert key != "OnExitCode" or pattern.rstrip("*").isdigit() or pattern == "*", rule
    assert rules[-1] == {"OnReason": "*", "Action": "EXIT"}
    cases = {  # (statusReason, container reason, exit code) of real failures -> what Batch must do
        "spot reclaim": ("Host EC2 (instance i-0abc) terminated.", None, None, "RETRY"),
        "image pull": ("Task failed to start", "CannotPullContainerError: pull image manifest has been retried 1 "
                       "time(s): failed to resolve ref: i/o timeout", None, "RETRY"),
        "image pull (reason only)": ("Essential container in task exited", "CannotPullContainerError: "
                                     "ref pull has been retried", None, "RETRY"),
        "secrets fetch": ("Task failed to start", "ResourceInitializationError: unable to pull secrets or registry "
                          "auth: execution resource retrieval failed", None, "RETRY"),
        "imagery outage": ("Essential container in task exited", None, RETRY_EXIT_CODE, "RETRY"),
        "bad input": ("Essential container in task exited", None, 2, "EXIT"),
        "a bug": ("Essential container in task exited", None, 1, "EXIT"),
        "out of memory": ("Essential container in task exited", "OutOfMemoryError: Container killed due to memory "
                          "usage", 137, "EXIT"),
        "no GPU": ("Essential container in task exited", None, NO_GPU_EXIT_CODE, "EXIT"),
    }
    for name, (status_reason, reason, code, expected) in cases.items():
        assert batch_decides(rules, status_reason=status_reason, reason=reason, exit_code=code) == expected, name
    assert NO_GPU_EXIT_CODE != RETRY_EXIT_CODE


def test_a_worker_that_asked_for_a_gpu_and_sees_none_exits_78_before_fetching(tmp_path):
    """On this machine TensorFlow sees no GPU (CUDA_VISIBLE_DEVICES is emptied so that holds on any machine)."""
    argv = [sys.executable, "-m", "tower_detector", "remote", "worker", "predict", "--model",
            "s3://nowhere-bucket/inputs/model.tar", "--imagery", "https://tiles.example.com/{z}/{x}/{y}.png",
            "--tiles", "s3://nowhere-bucket/jobs/j/cover.json", "--out", "s3://nowhere-bucket/jobs/j/results",
            "--events"]
    env = dict(os.environ, TOWER_DETECTOR_REQUIRE_GPU="1", CUDA_VISIBLE_DEVICES="",
               TOWER_DETECTOR_WORK=str(tmp_path), AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x",
               AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL="http://127.0.0.1:9")  # any S3 call would fail
    child = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 78, child.stdout[-2000:] + child.stderr[-2000:]
    last = json.loads(child.stdout.splitlines()[-1])
    assert last["event"] == "error" and "asked for a GPU (TOWER_DETECTOR_REQUIRE_GPU=1), but TensorFlow sees none" \
        in last["message"] and "not retried" in last["message"]
    assert "fetching" not in child.stdout  # nothing was brought down first
def test_template_is_valid_and_least_privilege():
    import cfnlint.api
    from cfnlint.decode import decode_str

    with open(TEMPLATE) as f:
        text = f.read()
    # cfn-lint checks every resource against AWS's own schemas (property names, types, enums)
    assert cfnlint.api.lint(text, config=cfnlint.api.ManualArgs(regions=["us-east-1", "eu-west-1"])) == []
    res = decode_str(text)[0]["Resources"]
    ce = res["ComputeEnvironment"]["Properties"]
    assert "ServiceRole" not in ce  # Batch's service-linked role (needed for in-place updates)
    assert ce["ComputeResources"]["Type"] == "SPOT"
    assert ce["ComputeResources"]["AllocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert ce["ComputeResources"]["MinvCpus"] == 0
    job = res["JobDefinition"]["Properties"]
    assert {"Type": "GPU", "Value": "1"} in job["ContainerProperties"]["ResourceRequirements"]
    assert job["RetryStrategy"]["EvaluateOnExit"] == RETRY_RULES
    assert {"Name": "TOWER_DETECTOR_REQUIRE_GPU", "Value": "1"} in job["ContainerProperties"]["Environment"]
    # the root volume, in a launch template the compute environment uses
    volume = res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["BlockDeviceMappings"][0]
    assert volume["DeviceName"] == "/dev/xvda" and volume["Ebs"]["VolumeSize"] == {"Ref": "RootVolumeGiB"}
    assert ce["ComputeResources"]["LaunchTemplate"] == {"LaunchTemplateId": {"Ref": "LaunchTemplate"}, "Version": {
        "Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"]}}
    # least privilege: no wildcard actions; the job role touches only the bucket; secrets only under the path
    for name in ("InstanceRole", "ExecutionRole", "JobRole"):
        for policy in res[name]["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert not any(a == "*" or a.endswith(":*") for a in actions), (name, actions)
                if statement["Resource"] == "*":
                    assert actions == ["ecr:GetAuthorizationToken"], (name, actions)  # it has no resource
    job_role = res["JobRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert {a for s in job_role for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])} == {
        "s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"}
    assert all("Bucket" in json.dumps(s["Resource"]) for s in job_role)
    ssm = [s for s in res["ExecutionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
           if s["Action"] == "ssm:GetParameters"]
    assert ssm and ssm[0]["Resource"]["Fn::Sub"].endswith(":parameter/${SecretsPath}/*")


def test_setup_deploys_updates_and_checks_the_stack(remote):
    batch, outputs = remote["batch"], remote["outputs"]
    assert set(outputs) >= {"Bucket", "JobQueue", "JobDefinition", "LogGroup", "RepositoryUri", "ComputeEnvironment"}
    remote["s3"].head_bucket(Bucket=outputs["Bucket"])
    ce = batch.describe_compute_environments(computeEnvironments=[outputs["ComputeEnvironment"]])[
        "computeEnvironments"][0]
    assert ce["computeResources"]["type"] == "SPOT" and ce["status"] == "VALID"
    assert ce["computeResources"]["allocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert all(t.startswith(("g4dn.", "g5.")) for t in ce["computeResources"]["instanceTypes"])
    queue = batch.describe_job_queues(jobQueues=[outputs["JobQueue"]])["jobQueues"][0]
    assert queue["state"] == "ENABLED" and queue["status"] == "VALID"
    jd = batch.describe_job_definitions(jobDefinitions=[outputs["JobDefinition"]])["jobDefinitions"][0]
    assert {"type": "GPU", "value": "1"} in jd["containerProperties"]["resourceRequirements"]
    assert jd["containerProperties"]["image"] == outputs["RepositoryUri"] + ":latest"
    assert jd["retryStrategy"]["attempts"] == 5
    assert [{k[0].upper() + k[1:]: v.upper() if k == "action" else v for k, v in c.items()}
            for c in jd["retryStrategy"]["evaluateOnExit"]] == RETRY_RULES

    rc, events, text = cli("remote", "setup", "--stack", "td", "--template", remote["template"], "--events")
    assert rc == 0 and events[-1]["action"] in ("updated", "up to date"), text[-2000:]
    assert events[-1]["outputs"]["Bucket"] == outputs["Bucket"]

    # --check: no worker image yet, which would stop every job
    import boto3

    boto3.client("ecr").batch_delete_image(repositoryName=outputs["RepositoryUri"].split("/", 1)[1],
                                           imageIds=[{"imageTag": "latest"}])
    message, _ = fails("remote", "setup", "--check", "--stack", "td", message="no worker image")
    assert outputs["RepositoryUri"] in message
    push_image(outputs["RepositoryUri"], "first")
    rc, events, text = cli("remote", "setup", "--check", "--stack", "td", "--events")
    assert rc == 0 and events[-1]["problems"] == [], text[-2000:]
    assert "workers:  8 at once" in events[-1]["notes"][0]


def batch_event(queue, status, detail_type="Batch Job State Change", status_reason=None):
    """An event as Batch sends it to EventBridge (the shape of AWS's documented examples), for a job of `queue`."""
    detail = {"jobArn": f"arn:aws:batch:us-east-1:{ACCOUNT}:job/4c7599ae-0a82-49aa-ba5a-4727fcce14a8",
              "jobName": "pak1", "jobId": "4c7599ae-0a82-49aa-ba5a-4727fcce14a8", "jobQueue": queue, "status": status,
              "attempts": [], "createdAt": 1641944200058, "dependsOn": [], "parameters": {}}
    if status_reason:
        detail["statusReason"] = status_reason
    return {"version": "0", "id": "c8f9c4b5-76e5-d76a-f980-7011e206042b", "detail-type": detail_type,
            "source": "aws.batch", "account": ACCOUNT, "time": "2026-12-01T23:36:40Z", "region": "us-east-1",
            "resources": [detail["jobArn"], queue], "detail": detail}


def test_the_alert_emails_failed_and_blocked_jobs_of_the_stacks_queue_only(remote):
    import boto3

    fails("remote", "setup", "--stack", "td-alert", "--template", remote["template"], "--alert-email", "not-an-address",
          message="--alert-email 'not-an-address' is not an e-mail address")
    rc, events, text = cli("remote", "setup", "--stack", "td-alert", "--template", remote["template"],
                           "--alert-email", "team@example.org", "--events")
    assert rc == 0, text[-3000:]
    outputs = events[-1]["outputs"]
    assert "alerts go to team@example.org once it confirms the subscription" in text
    topic, queue = outputs["AlertTopic"], outputs["JobQueue"]
    subscriptions = boto3.client("sns").list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subscriptions] == [("email", "team@example.org")]
    events_client = boto3.client("events")
    rules = [r for r in events_client.list_rules()["Rules"] if queue in r.get("EventPattern", "")]
    assert len(rules) == 2
    for rule in rules:
        targets = events_client.list_targets_by_rule(Rule=rule["Name"])["Targets"]
        assert [t["Arn"] for t in targets] == [topic] and "<reason>" in targets[0]["InputTransformer"]["InputTemplate"]

    # moto's TestEventPattern is not implemented: its own matcher, the one its PutEvents routes events with,
    # evaluates the deployed patterns
    from moto.events.models import EventPattern, EventTemplateParser

    def fires(event):
        return sorted(r["Description"].split(": ", 1)[1] for r in rules
                      if EventPattern.load(r["EventPattern"]).matches_event(event))

    failed, blocked = "a Batch job of the queue FAILED", "a Batch job of the queue is blocked in RUNNABLE"
    capacity = ("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the capacity requested for "
                "instance type [g5.xlarge]")
    assert fires(batch_event(queue, "FAILED", status_reason="Essential container in task exited")) == [failed]
    assert fires(batch_event(queue, "RUNNABLE", "Batch Job Queue Blocked", capacity)) == [blocked]
    assert fires(batch_event(queue, "RUNNABLE", "Batch Job Queue Blocked", "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"
                             " - The job resource requirement (vCPU/memory/GPU) is higher than that can be met by the "
                             "CE(s) attached to the job queue.")) == [blocked]
    assert fires(batch_event(queue, "RUNNABLE", status_reason=capacity)) == [blocked]
    assert fires(batch_event(queue, "RUNNABLE")) == []  # waiting its turn is not blocked
    assert fires(batch_event(queue, "SUCCEEDED", status_reason="Essential container in task exited")) == []
    assert fires(batch_event(queue.replace("td-alert", "other"), "FAILED")) == []  # another queue's job
    # the e-mail's text, as the rule's input transformer makes it
    target = events_client.list_targets_by_rule(Rule=next(r["Name"] for r in rules if "FAILED" in r["Description"]))[
        "Targets"][0]["InputTransformer"]
    message = EventTemplateParser.parse(input_template=target["InputTemplate"],
                                        input_paths_map=target["InputPathsMap"],
                                        event={**batch_event(queue, "FAILED", status_reason="Essential container "
                                                             "in task exited"), "ingestion-time": 0})  # moto's own
    assert message == ("Tower Detector: Batch job pak1 (4c7599ae-0a82-49aa-ba5a-4727fcce14a8) FAILED: Essential "
                       "container in task exited. See: tower-detector remote status pak1")

    # the stack without the address has none of it. Taking it away with --alert-email '' is not exercised here:
    # moto's CloudFormation answers setup's update, which names each of the 15 kept parameters UsePreviousValue,
    # with "Missing parameter VpcId" (an update naming only VpcId, SubnetIds and InstanceTypes does remove it)
    assert "AlertTopic" not in remote["outputs"]
    assert not [r for r in events_client.list_rules()["Rules"] if remote["outputs"]["JobQueue"] in
                r.get("EventPattern", "")]


# ---------------------------------------------------------------------------------------------
# a whole remote prediction
# ---------------------------------------------------------------------------------------------
def chunks_of(spec):
    """{(shard, index): arrays} of every chunk in a store."""
    with open_store(spec) as store:
        return {key: store.read_chunk(*key) for key in sorted(store.done_chunks())}


def test_remote_predict_in_three_shards_one_killed_equals_a_local_run(remote, tiny_model, sample_scene, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(SECRET + "\n"))  # a pipe: `secret put` reads it from there
    rc, events, text = cli("remote", "secret", "put", "TOKEN", "--stack", "td", "--events")
    assert rc == 0 and events[-1]["parameter"] == "/tower-detector/TOKEN", text
    printed = [text]

    with TileServer(sample_scene["imagery"], token=SECRET, latency=0.02) as server:
        imagery = server.template("png") + "?access_token=${TOKEN}"
        common = ["--model", tiny_model[0], "--imagery", imagery, "--area", sample_scene["area"],
                  "--checkpoint-every", 8, "--batch-size", 4, "--workers", 4]
        rc, events, text = cli("remote", "submit", "predict", *common, "--shards", 3, "--name", "scene3",
                               "--stack", "td", "--yes", "--events")
        assert rc == 0, text[-3000:]
        printed.append(text)
        submitted = events[-1]
        estimate = next(e for e in events if e.get("estimate"))["estimate"]
        assert estimate["tiles"] == 64 and estimate["shards"] == 3 and estimate["chunks"] == 8  # 24+24+16 tiles
        assert submitted["array_size"] == 3

        # what Batch holds: an array job of 3 children, our command, the secret mapped from SSM
        job = remote["batch"].describe_jobs(jobs=[submitted["job_id"]])["jobs"][0]
        assert job["arrayProperties"]["size"] == 3
        command = job["container"]["command"]
        assert command[:3] == ["remote", "worker", "predict"] and "${TOKEN}" in " ".join(command)
        assert command[command.index("--shards") + 1] == "3" and "--shard" not in command
        assert command[command.index("--out") + 1] == f"s3://{remote['bucket']}/jobs/scene3/results"
        jd = remote["batch"].describe_job_definitions(jobDefinitions=[job["jobDefinition"]])["jobDefinitions"][0]
        assert jd["containerProperties"]["secrets"] == [
            {"name": "TOKEN", "valueFrom": f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/tower-detector/TOKEN"}]
        assert [c["action"].upper() for c in jd["retryStrategy"]["evaluateOnExit"]] == [r["Action"] for r in
                                                                                         RETRY_RULES]

        # the Batch side: one process per child, with the environment a container of that child gets
        def child_env(i):
            return dict(os.environ, AWS_BATCH_JOB_ARRAY_INDEX=str(i), AWS_BATCH_JOB_ID=f"{job['jobId']}:{i}",
                        AWS_BATCH_JOB_ATTEMPT="1", TOKEN=SECRET, TOWER_DETECTOR_WORK=str(tmp_path / f"w{i}"))

        argv = [sys.executable, "-m", "tower_detector", *command]
        logs = {i: open(tmp_path / f"child{i}.log", "w+") for i in (0, 2)}
        others = [subprocess.Popen(argv, env=child_env(i), stdout=logs[i], stderr=subprocess.STDOUT, text=True)
                  for i in (0, 2)]
        victim = subprocess.Popen(argv, env=child_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed_output = []
        for line in victim.stdout:  # killed (as a spot reclaim would) once its first chunk is in the store
            killed_output.append(line)
            event = json.loads(line)
            if event["event"] == "progress" and event.get("chunk", 0) >= 1:
                victim.kill()
                break
        assert victim.wait(timeout=120) == -signal.SIGKILL
        killed_output.append(victim.stdout.read() + victim.stderr.read())
        assert [p.wait(timeout=300) for p in others] == [0, 0], [logs[i].seek(0) or logs[i].read() for i in logs]
        retry = subprocess.run(argv, env=child_env(1), capture_output=True, text=True, timeout=300)
        assert retry.returncode == 0, retry.stderr[-3000:]
        resumed = [json.loads(line) for line in retry.stdout.splitlines()][-1]
        assert resumed["chunks_existing"] >= 1 and resumed["chunks_written"] >= 1
        assert resumed["chunks_existing"] + resumed["chunks_written"] == 3
        printed += killed_output + [retry.stdout, retry.stderr] + [logs[i].seek(0) or logs[i].read() for i in logs]

        # the same job run here, in one process
        monkeypatch.setenv("TOKEN", SECRET)
        rc, events, text = cli("predict", *common, "--shards", 3, "--out", tmp_path / "local", "--events")
        assert rc == 0, text[-2000:]

    remote_chunks = chunks_of(f"s3://{remote['bucket']}/jobs/scene3/results")
    local_chunks = chunks_of(tmp_path / "local")
    assert remote_chunks.keys() == local_chunks.keys() and len(remote_chunks) == 8
    tiles = []
    for key, arrays in local_chunks.items():
        for name in ("x", "y", "error_index"):
            np.testing.assert_array_equal(remote_chunks[key][name], arrays[name], err_msg=f"{key} {name}")
        # the same model on the same tiles, in batches that may split differently among the model's streams:
        # equal but for float rounding (a CAM point once differed by 8e-6 px)
        for name, tolerance in (("score", 1e-6), ("cam_x", 1e-3), ("cam_y", 1e-3)):
            np.testing.assert_allclose(remote_chunks[key][name], arrays[name], atol=tolerance, err_msg=f"{key} {name}")
        tiles += list(zip(arrays["x"].tolist(), arrays["y"].tolist()))
    assert len(tiles) == len(set(tiles)) == 64 and np.isfinite(np.concatenate(
        [c["score"] for c in remote_chunks.values()])).all()

    # status, logs, fetch
    put_logs(remote, f"{job['jobId']}:1", [line.strip() for line in retry.stdout.splitlines()])
    rc, events, text = cli("remote", "status", "scene3", "--events")
    assert rc == 0, text
    assert events[-1]["progress"] == {"chunks_done": 8, "chunks_total": 8, "tiles_done": 64, "tiles_total": 64,
                                      "tiles_failed_permanent": 0, "tiles_failed_transient": 0, "failures": {},
                                      "complete": True}
    assert "failed: 0 for good (no imagery there, unreadable), 0 to retry (imagery unreachable)" in text
    assert events[-1]["children"] == {"SUCCEEDED": 3}
    printed.append(text)
    rc, events, text = cli("remote", "logs", "scene3", "--child", 1, "--tail", 2, "--events")
    assert rc == 0 and events[-1]["logs"] == {"child 1": retry.stdout.strip().splitlines()[-2:]}, text
    rc, events, text = cli("remote", "fetch", "scene3", "--out", tmp_path / "fetched", "--events")
    assert rc == 0 and events[-1]["complete"] and events[-1]["scored"] == 64, text[-2000:]
    assert not (tmp_path / "fetched" / "scores.json").exists()  # only when asked: a country's is over a GB
    rc, events, text = cli("remote", "fetch", "scene3", "--out", tmp_path / "fetched", "--scores-json", "--events")
    assert rc == 0 and events[-1]["outputs"]["json"].endswith("scores.json"), text[-2000:]
    printed.append(text)
    seed = json.loads((tmp_path / "fetched" / "scores.json").read_text())
    expected = {f"{x}-{y}-18": float(s) for c in local_chunks.values()
                for x, y, s in zip(c["x"].tolist(), c["y"].tolist(), c["score"].tolist())}
    assert seed.keys() == expected.keys() and all(abs(seed[k] - expected[k]) < 1e-6 for k in seed)
    for name in ("heatmap.tif", "candidates.gpkg", "overlay.geojson"):
        assert (tmp_path / "fetched" / name).stat().st_size > 0

    # the secret: in no S3 object (chunks and tars opened), no log line, no event, not in Batch, not in the job list
    assert_secret_nowhere(remote, printed, tmp_path)


def assert_secret_nowhere(remote, printed, tmp_path):
    s3, needle = remote["s3"], SECRET.encode()
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=remote["bucket"])
            for o in page.get("Contents", [])]
    assert any(k.endswith(".npz") for k in keys) and any(k.endswith(".tar") for k in keys)
    for key in keys:
        data = s3.get_object(Bucket=remote["bucket"], Key=key)["Body"].read()
        parts = [data]
        if key.endswith(".npz"):
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                parts += [z.read(n) for n in z.namelist()]
        if key.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(data)) as t:
                parts += [t.extractfile(m).read() for m in t.getmembers() if m.isfile()]
        assert not any(needle in p for p in parts), key
    assert not any(SECRET in text for text in printed)
    batch = remote["batch"]
    jobs_file = os.path.join(os.environ["TOWER_DETECTOR_HOME"], "jobs.json")
    with open(jobs_file) as f:
        jobs = json.load(f)
    assert SECRET not in json.dumps(jobs)
    assert SECRET not in json.dumps(batch.describe_jobs(jobs=[j["job_id"] for j in jobs.values()]), default=str)
    assert SECRET not in json.dumps(batch.describe_job_definitions(), default=str)
    logs = remote["logs"]
    for stream in logs.describe_log_streams(logGroupName=remote["outputs"]["LogGroup"])["logStreams"]:
        events = logs.get_log_events(logGroupName=remote["outputs"]["LogGroup"],
                                     logStreamName=stream["logStreamName"])["events"]
        assert events and not any(SECRET in e["message"] for e in events)


# ---------------------------------------------------------------------------------------------
# training and search: the output folder mirrored to S3
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("params") / "tiny.json"
    path.write_text(json.dumps(TINY_TRAINING))
    return path


def submit_train(training_set, params_file, name, *extra):
    rc, events, text = cli("remote", "submit", "train", "--data", training_set, "--params", params_file, "--weights",
                           "none", "--name", name, "--stack", "td", "--yes", "--events", *extra)
    assert rc == 0, text[-3000:]
    return events[-1]


def test_remote_train_resumes_from_s3_and_fetch_gets_the_model(remote, training_set, params_file, tiny_model,
                                                               tmp_path, monkeypatch):
    submitted = submit_train(training_set, params_file, "train1")
    job = remote["batch"].describe_jobs(jobs=[submitted["job_id"]])["jobs"][0]
    assert "arrayProperties" not in job or not job["arrayProperties"].get("size")
    command = job["container"]["command"]
    assert command[:3] == ["remote", "worker", "train"]
    assert command[command.index("--data") + 1].startswith(f"s3://{remote['bucket']}/inputs/data-")
    assert command[command.index("--out") + 1] == f"s3://{remote['bucket']}/jobs/train1/out"
    # an earlier attempt trained and pushed the model, then lost its instance: the retry, on a fresh machine,
    # pulls the folder and finds the training done (train's own resume does the rest)
    model = tiny_model[0]
    for name in os.listdir(model):
        if os.path.isfile(os.path.join(model, name)):
            remote["s3"].upload_file(os.path.join(model, name), remote["bucket"], f"jobs/train1/out/{name}")
    monkeypatch.setenv("TOWER_DETECTOR_WORK", str(tmp_path / "fresh-machine"))
    rc, events, text = cli(*command)
    assert rc == 0, text[-3000:]
    messages = [e.get("message", "") for e in events if e["event"] == "log"]
    assert any(m.startswith("resuming from ") for m in messages)
    assert any("already holds this finished training" in m for m in messages)
    assert events[-1]["roc_auc"] == tiny_model[1]["roc_auc"]

    rc, events, text = cli("remote", "fetch", "train1", "--out", tmp_path / "model", "--events")
    assert rc == 0 and events[-1]["finished"], text[-2000:]
    with open(os.path.join(model, "model.keras"), "rb") as a, open(tmp_path / "model" / "model.keras", "rb") as b:
        assert a.read() == b.read()
    assert json.loads((tmp_path / "model" / "params.json").read_text()) == json.loads(
        open(os.path.join(model, "params.json")).read())

    # a search: the same dataset is not uploaded again (content-addressed), its folder goes to jobs/NAME/out
    rc, events, text = cli("remote", "submit", "search", "--data", training_set, "--trials", 3, "--params",
                           params_file, "--weights", "none", "--name", "search1", "--stack", "td", "--yes", "--events")
    assert rc == 0, text[-2000:]
    search = remote["batch"].describe_jobs(jobs=[events[-1]["job_id"]])["jobs"][0]["container"]["command"]
    assert search[:3] == ["remote", "worker", "search"] and search[search.index("--trials") + 1] == "3"
    assert search[search.index("--data") + 1] == command[command.index("--data") + 1]
    assert search[search.index("--out") + 1] == f"s3://{remote['bucket']}/jobs/search1/out"


def test_dirsync_pushes_whole_files_only_and_a_retry_pulls_them(remote, tmp_path):
    from tower_detector.remote.transfer import DirSync

    local = tmp_path / "out"
    sync = DirSync(remote["s3"], str(local), remote["bucket"], "sync-test/run", interval=3600)
    assert sync.pull() == 0
    (local / "a.txt").write_text("1")
    assert sync.push(settled_only=True) == 0  # first seen: it may be being written
    assert sync.push(settled_only=True) == 1  # unchanged since: whole
    (local / "a.txt").write_text("22")
    (local / "sub").mkdir()
    (local / "sub" / "b.txt").write_text("x")
    assert sync.push(settled_only=True) == 0
    sync.start()
    assert sync.close() == 2  # the command has returned: everything goes
    retry = DirSync(remote["s3"], str(tmp_path / "elsewhere"), remote["bucket"], "sync-test/run")
    assert retry.pull() == 2
    assert (tmp_path / "elsewhere" / "a.txt").read_text() == "22"
    assert (tmp_path / "elsewhere" / "sub" / "b.txt").read_text() == "x"
    assert retry.push() == 0  # what was pulled is not pushed back


# ---------------------------------------------------------------------------------------------
# status, cancel, failures
# ---------------------------------------------------------------------------------------------
def test_status_counts_children_and_cancel_terminates(remote, tiny_model, sample_scene):
    rc, events, text = cli("remote", "submit", "predict", "--model", tiny_model[0], "--imagery",
                           "https://tiles.example.com/{z}/{x}/{y}.png", "--area", sample_scene["area"], "--shards", 2,
                           "--name", "halfway", "--stack", "td", "--yes", "--events")
    assert rc == 0, text[-2000:]
    job_id = events[-1]["job_id"]
    # Batch's view mid-run, which moto never reaches: child 0 running, child 1 out of attempts
    moto_job(job_id).status = moto_job(f"{job_id}:0").status = "RUNNING"
    failed = moto_job(f"{job_id}:1")
    stream = remote["batch"].describe_jobs(jobs=[f"{job_id}:1"])["jobs"][0]["container"]["logStreamName"]
    failed.status = "FAILED"
    failed.attempts = [{"container": {"exitCode": 2, "logStreamName": stream}, "statusReason": "Essential container "
                        "in task exited"}]
    put_logs(remote, f"{job_id}:1", ['{"event": "error", "message": "the imagery spec refers to ${TOKEN}, which is '
                                     'not set in the environment", "kind": "bad_input"}'])
    rc, events, text = cli("remote", "status", "halfway", "--events")
    assert rc == 0, text  # the job goes on
    assert events[-1]["status"] == "RUNNING" and events[-1]["children"] == {"RUNNING": 1, "FAILED": 1}
    assert events[-1]["progress"] is None  # no worker has written the store yet
    assert events[-1]["failed"][0]["index"] == 1 and "exit code 2" in events[-1]["failed"][0]["reason"]
    assert "which is not set in the environment" in events[-1]["failed"][0]["log_tail"][0]
    rc, events, text = cli("remote", "cancel", "halfway", "--events")
    assert rc == 0 and events[-1]["terminated"], text
    assert moto_job(job_id).job_stopped_reason == "cancelled with tower-detector remote cancel"


def write_chunks(remote, name, tmp_path, chunks, chunk_size=16):
    """What a job's workers write, without TensorFlow: the chunks {(shard, index): errors} of job `name`'s store,
    every tile scored 0.1 but the failed ones, through the store's own API on the job's cover."""
    from tower_detector.geo.cover import TileCover

    path = tmp_path / f"{name}-cover.json"
    remote["s3"].download_file(remote["bucket"], f"jobs/{name}/cover.json", str(path))
    shards = [(s["x_start"], s["x_end"]) for s in json.loads(path.read_text())["shards"]]
    with open_store(f"s3://{remote['bucket']}/jobs/{name}/results", create=True) as store:
        store.create_job({"identity": {"test": name}}, TileCover.load(str(path)), shards, chunk_size)
        for (shard, index), errors in chunks.items():
            x, y = store.plan.chunk_tiles(shard, index)
            store.write_chunk(shard, index, x, y, np.full(len(x), 0.1, dtype=np.float32), errors=errors)


def test_status_of_an_array_job_mid_run_shows_rate_eta_cost_failures_and_waiting_children(remote, tiny_model,
                                                                                            sample_scene, tmp_path):
    from moto.batch.models import datetime2int_milliseconds

    from tower_detector.remote.aws import Aws
    from tower_detector.remote.jobs import find_job, status

    rc, events, text = cli("remote", "submit", "predict", "--model", tiny_model[0], "--imagery",
                           "https://tiles.example.com/{z}/{x}/{y}.png", "--area", sample_scene["area"], "--shards", 2,
                           "--checkpoint-every", 16, "--name", "watched", "--stack", "td", "--yes", "--events")
    assert rc == 0, text[-2000:]
    job_id, price = events[-1]["job_id"], events[-1]["estimate"]["spot_price"]
    # child 0 wrote its shard (32 tiles, two chunks) into the store: one tile with no imagery, one to retry
    write_chunks(remote, "watched", tmp_path, {(0, 0): {3: "HTTP 404"}, (0, 1): {2: ("HTTP 502", True)}})
    # Batch mid-run, which moto never reaches: the parent PENDING while child 0 runs its second attempt (the first
    # was a spot reclaim) and child 1 waits in RUNNABLE, blocked for capacity
    started = moto_job(job_id).job_created_at
    t0 = datetime2int_milliseconds(started)
    moto_job(job_id).status = "PENDING"
    child = moto_job(f"{job_id}:0")
    child.status, child.job_started_at = "RUNNING", started + __import__("datetime").timedelta(minutes=65)
    child.attempts = [{"startedAt": t0, "stoppedAt": t0 + H, "statusReason": "Host EC2 (instance i-0abc) terminated.",
                       "container": {}}]
    blocked = ("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the capacity requested for instance "
               "type [g5.xlarge]")
    waiting = moto_job(f"{job_id}:1")
    waiting.status, waiting.job_stopped_reason, waiting.attempts = "RUNNABLE", blocked, []  # it never ran

    record = find_job("watched")
    text, fields, failure = status(Aws(region="us-east-1"), record, now_ms=t0 + 2 * H)
    assert failure is None and fields["status"] == "PENDING"
    assert fields["children"] == {"RUNNING": 1, "RUNNABLE": 1}
    # the capacity hint fires for the waiting child, with Batch's reason
    assert fields["waiting"] == {"jobs": 1, "reason": blocked}
    assert f"waiting for capacity: 1 child RUNNABLE; Batch says: {blocked}" in text
    # 31 tiles done (32 less the one to retry) in 2 h of wall clock and 6,900 worker-seconds (60 + 55 min)
    rate = fields["rate"]
    assert rate["tiles_this_job"] == 31 and rate["tiles_left"] == 33 and rate["workers_running"] == 1
    assert rate["elapsed_seconds"] == 7200 and rate["worker_seconds"] == 6900
    assert rate["tiles_per_second"] == pytest.approx(31 / 7200)
    assert rate["eta_seconds"] == pytest.approx(33 / (31 / 6900))  # 7,345 s with the one worker running
    assert "ETA: about 2 h 02 min for 33 tiles left with the 1 worker running now" in text
    assert fields["cost"] == {"worker_hours": round(6900 / 3600, 4), "spot_price": price,
                              "dollars": round(6900 / 3600 * price, 2), "estimate": True}
    assert "an estimate" in text
    assert fields["failures"]["tiles"] == {"permanent": 1, "transient": 1,
                                           "reasons": fields["progress"]["failures"]}
    assert fields["failures"]["attempts"] == {"spot_reclaim": 1} and fields["failures"]["children"] == {}
    assert "failed attempts: 1 spot reclaim" in text

    # the same through the CLI's result event (what the plugin reads); then child 1 failed for good, no GPU seen
    moto_job(f"{job_id}:1").status = "FAILED"
    moto_job(f"{job_id}:1").attempts = [{"startedAt": t0, "stoppedAt": t0 + 60_000, "container": {"exitCode": 78},
                                         "statusReason": "Essential container in task exited"}]
    rc, events, text = cli("remote", "status", "watched", "--events")
    assert rc == 0, text
    result = events[-1]
    assert result["event"] == "result" and result["rate"]["tiles_this_job"] == 31 and result["waiting"] is None
    assert result["failures"]["children"] == {"no_gpu": 1}
    assert result["failures"]["attempts"] == {"spot_reclaim": 1, "no_gpu": 1}
    # child 1's failed minute is counted (child 0's running attempt counts up to the real now, which moto's clock
    # puts before its start: nothing)
    assert result["cost"]["worker_hours"] == round(61 / 60, 4)


def test_a_teammate_follows_fetches_and_retries_a_job_from_its_record_in_the_bucket(remote, tiny_model, sample_scene,
                                                                                    tmp_path, monkeypatch):
    rc, events, text = cli("remote", "submit", "predict", "--model", tiny_model[0], "--imagery",
                           "https://tiles.example.com/{z}/{x}/{y}.png", "--area", sample_scene["area"], "--shards", 2,
                           "--checkpoint-every", 16, "--name", "shared", "--stack", "td", "--yes", "--events")
    assert rc == 0, text[-2000:]
    job_id = events[-1]["job_id"]
    with open(os.path.join(os.environ["TOWER_DETECTOR_HOME"], "jobs.json")) as f:
        local = json.load(f)["shared"]
    body = remote["s3"].get_object(Bucket=remote["bucket"], Key="jobs/shared/job-record.json")["Body"].read()
    kept = json.loads(body)
    assert "profile" in local and "profile" not in kept  # this machine's profile stays here
    assert kept == {k: v for k, v in local.items() if k != "profile"}
    assert SECRET.encode() not in body
    write_chunks(remote, "shared", tmp_path, {(0, 0): None, (0, 1): None, (1, 0): None, (1, 1): None})
    moto_job(job_id).status = "FAILED"
    moto_job(f"{job_id}:0").status, moto_job(f"{job_id}:1").status = "SUCCEEDED", "FAILED"

    # a teammate: a job list of their own, empty
    monkeypatch.setenv("TOWER_DETECTOR_HOME", str(tmp_path / "teammate"))
    fails("remote", "status", "shared", "--stack", "td-none", message="no stack 'td-none'")  # the bucket is needed
    fails("remote", "status", "nosuchjob", "--stack", "td", message=f"nor in s3://{remote['bucket']}/jobs/")
    rc, events, text = cli("remote", "status", "shared", "--stack", "td", "--events")
    assert rc == 2 and events[-2]["event"] == "result", text  # the job failed: one child did
    assert events[-2]["job_id"] == job_id and events[-2]["progress"]["complete"]
    rc, events, text = cli("remote", "fetch", "shared", "--stack", "td", "--out", tmp_path / "fetched", "--events")
    assert rc == 0 and events[-1]["scored"] == 64, text[-2000:]
    assert (tmp_path / "fetched" / "heatmap.tif").stat().st_size > 0
    rc, events, text = cli("remote", "jobs", "--events")
    assert rc == 0 and events[-1]["jobs"] == []  # nothing submitted from here
    rc, events, text = cli("remote", "jobs", "--all", "--stack", "td", "--events")
    listed = {j["name"]: j for j in events[-1]["jobs"]}
    assert listed["shared"]["where"] == "bucket" and listed["shared"]["job_id"] == job_id
    assert "(bucket)" in text
    rc, events, text = cli("remote", "retry", "shared", "--stack", "td", "--events")
    assert rc == 0 and events[-1]["name"] == "shared-retry1" and events[-1]["shards"] == [1], text[-2000:]
    retried = json.loads(remote["s3"].get_object(Bucket=remote["bucket"], Key="jobs/shared-retry1/job-record.json")[
        "Body"].read())
    assert retried["retry_of"] == "shared" and retried["store"] == local["store"] and "profile" not in retried
    assert retried["tiles_done_at_submit"] == 64

    # the submitter, back on their machine, does not know of the retry locally: its name is taken in the bucket
    monkeypatch.setenv("TOWER_DETECTOR_HOME", str(tmp_path / "another"))
    rc, events, text = cli("remote", "retry", "shared", "--stack", "td", "--events")
    assert rc == 0 and events[-1]["name"] == "shared-retry2", text[-2000:]


def test_retry_resubmits_only_the_failed_children_into_the_same_store(remote, tiny_model, sample_scene):
    from tower_detector.remote.worker import shard_of

    rc, events, text = cli("remote", "submit", "predict", "--model", tiny_model[0], "--imagery",
                           "https://tiles.example.com/{z}/{x}/{y}.png", "--area", sample_scene["area"], "--shards", 4,
                           "--name", "partly", "--stack", "td", "--yes", "--events")
    assert rc == 0, text[-2000:]
    job_id = events[-1]["job_id"]
    batch = remote["batch"]
    original = batch.describe_jobs(jobs=[job_id])["jobs"][0]
    moto_job(job_id).status = moto_job(f"{job_id}:0").status = "RUNNING"
    fails("remote", "retry", "partly", message="is RUNNING: retry it once it has ended")
    # Batch's view at the end, which moto never reaches: children 1 and 3 out of attempts
    moto_job(job_id).status = "FAILED"
    for i in range(4):
        moto_job(f"{job_id}:{i}").status = "FAILED" if i in (1, 3) else "SUCCEEDED"
    rc, events, text = cli("remote", "retry", "partly", "--events")
    assert rc == 0, text[-2000:]
    result = events[-1]
    assert result["shards"] == [1, 3] and result["name"] == "partly-retry1" and "2 failed shards of 4" in text
    assert result["store"] == f"s3://{remote['bucket']}/jobs/partly/results"  # the same store
    new = batch.describe_jobs(jobs=[result["job_id"]])["jobs"][0]
    assert new["arrayProperties"]["size"] == 2
    assert new["container"]["command"] == original["container"]["command"]
    assert new["jobDefinition"] == original["jobDefinition"]  # the same pinned image and secrets
    env = {e["name"]: e["value"] for e in new["container"]["environment"]}
    assert env["TOWER_DETECTOR_SHARDS"] == "1,3"
    # child i of the retry scores the i-th failed shard
    assert [shard_of(4, {"AWS_BATCH_JOB_ARRAY_INDEX": str(i), "TOWER_DETECTOR_SHARDS": env["TOWER_DETECTOR_SHARDS"]})
            for i in range(2)] == ["1/4", "3/4"]
    assert shard_of(4, {"TOWER_DETECTOR_SHARDS": "2"}) == "2/4"  # one shard: not an array job
    rc, events, text = cli("remote", "status", "partly-retry1", "--events")
    assert rc == 0 and events[-1]["name"] == "partly-retry1", text[-2000:]
    # a job none of whose children failed has nothing to retry
    moto_job(f"{job_id}:1").status = moto_job(f"{job_id}:3").status = "SUCCEEDED"
    fails("remote", "retry", "partly", message="no child failed")


def test_a_child_whose_tiles_failed_transiently_exits_75_for_batch_to_retry(remote, tiny_model, sample_scene,
                                                                             tmp_path):
    with TileServer(sample_scene["imagery"]) as server:
        rc, events, text = cli("remote", "submit", "predict", "--model", tiny_model[0], "--imagery",
                               server.template("png"), "--area", sample_scene["area"], "--checkpoint-every", 16,
                               "--name", "outage", "--stack", "td", "--yes", "--events")
        assert rc == 0, text[-2000:]
        command = remote["batch"].describe_jobs(jobs=[events[-1]["job_id"]])["jobs"][0]["container"]["command"]
        argv = [sys.executable, "-m", "tower_detector", *command]
        env = dict(os.environ, AWS_BATCH_JOB_ARRAY_INDEX="0", TOWER_DETECTOR_WORK=str(tmp_path / "w"))
        server.status = {server.tiles[5]: 404, server.tiles[9]: 502, server.tiles[10]: 502}
        child = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert child.returncode == 75, child.stderr[-2000:]  # the job definition retries exit 75
        assert "2 tiles failed transiently (HTTP 502 after 4 retries x2)" in child.stdout
        rc, events, text = cli("remote", "status", "outage", "--events")
        progress = events[-1]["progress"]
        assert progress["tiles_failed_transient"] == 2 and progress["tiles_failed_permanent"] == 1
        assert not progress["complete"] and progress["tiles_done"] == 62
        assert "failed: 1 for good (no imagery there, unreadable), 2 to retry (imagery unreachable)" in text

        server.status = {server.tiles[5]: 404}  # the outage is over; Batch's retry of the child
        child = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert child.returncode == 0, child.stderr[-2000:]
    rc, events, text = cli("remote", "status", "outage", "--events")
    assert events[-1]["progress"]["complete"] and events[-1]["progress"]["tiles_done"] == 64


def test_a_child_stopped_by_sigterm_exits_75_for_batch_to_retry(remote, tiny_model, sample_scene, tmp_path):
    with TileServer(sample_scene["imagery"], latency=0.05) as server:
        rc, events, text = cli("remote", "submit", "predict", "--model", tiny_model[0], "--imagery",
                               server.template("png"), "--area", sample_scene["area"], "--checkpoint-every", 8,
                               "--batch-size", 4, "--name", "sigterm", "--stack", "td", "--yes", "--events")
        assert rc == 0, text[-2000:]
        command = remote["batch"].describe_jobs(jobs=[events[-1]["job_id"]])["jobs"][0]["container"]["command"]
        env = dict(os.environ, AWS_BATCH_JOB_ARRAY_INDEX="0", TOWER_DETECTOR_WORK=str(tmp_path / "w"))
        child = subprocess.Popen([sys.executable, "-m", "tower_detector", *command], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        for line in child.stdout:  # a spot notice, or ECS draining the instance: SIGTERM once a chunk is written
            event = json.loads(line)
            if event["event"] == "progress" and event.get("chunk", 0) >= 1:
                child.send_signal(signal.SIGTERM)
                break
        rest = child.stdout.read()
        assert child.wait(timeout=120) == 75, rest + child.stderr.read()[-2000:]  # retried by the exit-75 rule
        assert json.loads(rest.splitlines()[-1])["kind"] == "failure"


def test_a_job_that_failed_three_times_shows_why_and_its_last_log_lines(remote, training_set, params_file):
    job_id = submit_train(training_set, params_file, "train-fails")["job_id"]
    job = moto_job(job_id)
    stream = remote["batch"].describe_jobs(jobs=[job_id])["jobs"][0]["container"]["logStreamName"]
    job.status, job.job_stopped_reason, job.exit_code = "FAILED", "Essential container in task exited", 1
    job.attempts = [{"container": {"exitCode": 1, "logStreamName": stream}, "startedAt": 1, "stoppedAt": 2,
                     "statusReason": "Essential container in task exited"} for _ in range(3)]
    lines = ["fetching --data s3://bucket/inputs/data.tar", "loading the dataset",
             "error: dataset tile /tmp/x/tiles/1.png is missing"]
    put_logs(remote, job_id, lines)
    message, events = fails("remote", "status", "train-fails", message="FAILED")
    assert "after 3 attempts" in message and "Essential container in task exited (exit code 1)" in message
    report = events[-2]
    assert report["event"] == "result" and report["failed"][0]["log_tail"] == lines
    assert lines[-1] in report["message"]


# ---------------------------------------------------------------------------------------------
# the pilot, and shards sized from a rate
# ---------------------------------------------------------------------------------------------
def test_a_pilot_measures_its_tiles_and_the_full_run_takes_its_rate(remote, tiny_model, sample_scene, tmp_path,
                                                                     monkeypatch):
    from tower_detector.geo.areas import load_area
    from tower_detector.geo.cover import tile_cover
    from tower_detector.prediction.predict import model_fingerprint
    from tower_detector.remote.capacity import size_shards
    from tower_detector.remote.pilot import sample_cover

    monkeypatch.setattr(sys, "stdin", io.StringIO(SECRET + "\n"))
    rc, _, text = cli("remote", "secret", "put", "TOKEN", "--stack", "td", "--events")
    assert rc == 0, text
    area = tile_cover(load_area(str(sample_scene["area"])), 18)
    sampled = list(zip(*(a.tolist() for a in next(sample_cover(area, 16).iter_batches()))))
    with TileServer(sample_scene["imagery"], token=SECRET, latency=0.01) as server:
        imagery = server.template("png") + "?access_token=${TOKEN}"
        common = ["--model", tiny_model[0], "--imagery", imagery, "--area", sample_scene["area"], "--stack", "td",
                  "--checkpoint-every", 8, "--batch-size", 4, "--workers", 4]
        rc, events, text = cli("remote", "submit", "predict", *common, "--pilot", 16, "--name", "pilot1", "--yes",
                               "--events")
        assert rc == 0, text[-3000:]
        estimate = next(e for e in events if e.get("estimate"))["estimate"]
        assert estimate["tiles"] == 16 and estimate["shards"] == 1
        assert "16 tiles spread evenly over the area's 64" in text
        job = remote["batch"].describe_jobs(jobs=[events[-1]["job_id"]])["jobs"][0]
        assert not job.get("arrayProperties", {}).get("size")  # one job, one worker
        command = job["container"]["command"]
        report = f"s3://{remote['bucket']}/jobs/pilot1/pilot.json"
        assert command[:5] == ["remote", "worker", "--pilot", report, "predict"]
        assert command[command.index("--out") + 1] == f"s3://{remote['bucket']}/jobs/pilot1/results"

        moto_job(job["jobId"]).status = "RUNNING"  # moto marked it done at once
        rc, events, text = cli("remote", "status", "pilot1", "--events")
        assert rc == 0 and "pilot: 16 tiles of the area's 64; its figures come when it ends" in text, text
        assert "pilot" not in events[-1] and "full_run" not in events[-1]
        moto_job(job["jobId"]).status = "SUCCEEDED"

        # the worker, as Batch runs it; two sampled tiles have no imagery, one fails once (a 502) before it is served
        server.status = {sampled[3]: 404, sampled[11]: 404}
        server.flaky = {sampled[7]: (502, 1)}
        env = dict(os.environ, TOKEN=SECRET, TOWER_DETECTOR_JOB="pilot1", TOWER_DETECTOR_WORK=str(tmp_path / "w"))
        child = subprocess.run([sys.executable, "-m", "tower_detector", *command], env=env, capture_output=True,
                               text=True, timeout=300)
        assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
        asked = {tuple(int(v) for v in p.rsplit(".", 1)[0].split("/")[2:]) for p in server.paths}
        assert asked == set(sampled)  # the sample, spread over the scene, and nothing else

    figures = json.loads(remote["s3"].get_object(Bucket=remote["bucket"], Key="jobs/pilot1/pilot.json")["Body"].read())
    assert SECRET not in json.dumps(figures) and figures["imagery"] == imagery  # as written: ${TOKEN}
    assert (figures["tiles"], figures["tiles_scored"], figures["tiles_failed_permanent"],
            figures["tiles_failed_transient"]) == (16, 14, 2, 0)
    assert figures["tiles_per_second"] > 0 and figures["tiles_per_second_per_view"] == figures["tiles_per_second"]
    assert all(isinstance(figures[k], float) for k in ("seconds", "startup_seconds"))  # recorded, as numbers
    requests = figures["imagery_requests"]
    assert requests["requests"] == 17  # 16 tiles, one of them asked twice
    assert (requests["failed_transient"], requests["failed_permanent"], requests["no_imagery"]) == (1, 2, 2)
    assert requests["error_rate_transient"] == pytest.approx(1 / 17, abs=1e-4)
    assert requests["error_rate_permanent"] == pytest.approx(2 / 17, abs=1e-4)
    # the server waits 10 ms before every answer, so no request can take less
    assert 0.01 <= requests["latency_median_s"] <= requests["latency_p95_s"]
    if shutil.which("nvidia-smi") is None:
        assert figures["gpu"]["utilisation_percent"] is None and figures["gpu"]["reason"] == "no nvidia-smi"
    assert figures["model_fingerprint"] == model_fingerprint(tiny_model[0]) and figures["zoom"] == 18
    assert figures["model"] == command[command.index("--model") + 1]

    # status: the figures, and what they mean for the whole area
    rc, events, text = cli("remote", "status", "pilot1", "--events")
    assert rc == 0, text[-2000:]
    assert events[-1]["pilot"] == figures and "imagery: 17 requests" in text
    full = events[-1]["full_run"]
    assert full["tiles"] == 64 and full["tiles_per_second"] == figures["tiles_per_second_per_view"]
    assert "measured by the pilot pilot1 on 16 tiles" in text and "--from-pilot pilot1" in text

    # the full run takes the pilot's rate; its shards follow from it
    predict = ["remote", "submit", "predict", *common[:-6], "--checkpoint-every", 8, "--yes", "--events"]
    rc, events, text = cli(*predict, "--from-pilot", "pilot1", "--name", "full1")
    assert rc == 0, text[-3000:]
    e = next(ev for ev in events if ev.get("estimate"))["estimate"]
    assert e["tiles_per_second"] == figures["tiles_per_second_per_view"]
    assert e["rate"] == {"kind": "pilot", "pilot": "pilot1", "tiles": 16, "gpu": figures["gpu"]["name"]}
    assert e["shards"] == size_shards(64, e["tiles_per_second"], timeout_hours=24, workers=8, startup_minutes=5,
                                      columns=8)["shards"] == 1
    assert "at {:g} tiles/s per GPU (measured by the pilot pilot1 on 16 tiles".format(e["tiles_per_second"]) in text
    # a pilot that measured a rate slow enough that 64 tiles take 17.8 h: 8 shards, one per worker
    slow = dict(figures, tiles_per_second=0.001, tiles_per_second_per_view=0.001)
    remote["s3"].put_object(Bucket=remote["bucket"], Key="jobs/slowpilot/pilot.json", Body=json.dumps(slow).encode())
    rc, events, text = cli(*predict, "--from-pilot", "slowpilot", "--name", "full2")
    assert rc == 0, text[-3000:]
    e = next(ev for ev in events if ev.get("estimate"))["estimate"]
    assert e["shards"] == 8 and e["sizing"]["shard_hours"] == pytest.approx(64 / 0.001 / 3600 / 8 + 5 / 60, abs=1e-3)
    assert remote["batch"].describe_jobs(jobs=[events[-1]["job_id"]])["jobs"][0]["arrayProperties"]["size"] == 8
    assert "shards:   8 sized from the rate" in text
    # --shards given that would outlast the attempt at that rate: one warning line
    rc, events, text = cli(*predict, "--from-pilot", "slowpilot", "--shards", 2, "--timeout-hours", 4,
                           "--name", "full3")
    assert rc == 0, text[-3000:]
    e = next(ev for ev in events if ev.get("estimate"))["estimate"]
    assert len(e["warnings"]) == 1 and "over the 4 h attempt timeout" in e["warnings"][0]

    # mixing that makes no sense: one line, exit 2
    fails(*predict, "--pilot", 4, "--shards", 2, message="--pilot scores its tiles in one job on one worker")
    fails(*predict, "--pilot", 4, "--from-pilot", "pilot1", message="give one of them")
    fails(*predict, "--pilot", 4, "--out", f"s3://{remote['bucket']}/prod", message="never a production store")
    fails(*predict, "--from-pilot", "pilot1", "--tiles-per-second", 300, message="leave out --tiles-per-second")
    fails(*predict, "--from-pilot", "nopilot", message="no s3://")
    fails(*predict, "--from-pilot", "pilot1", "--zoom", 17, message="the pilot measured another run (zoom 18, not 17)")
    retrained = tmp_path / "retrained"
    shutil.copytree(tiny_model[0], retrained)
    with open(retrained / "model.keras", "ab") as f:
        f.write(b"\0")  # other weights, as far as the fingerprint can tell
    fails(*predict[:3], "--model", retrained, *predict[5:], "--from-pilot", "pilot1",
          message="the pilot measured another run (another model (s3://")
    other = ["--imagery", imagery.replace("png", "jpg")]
    fails(*predict[:5], *other, *predict[7:], "--from-pilot", "pilot1",
          message="the pilot measured another run (another imagery (http://127.0.0.1")
    jobs = cli("remote", "jobs", "--events")[1][-1]["jobs"]
    assert {"full1", "full2", "full3"} <= {j["name"] for j in jobs} and "full4" not in jobs


def test_a_pilot_samples_the_whole_cover_not_its_corner():
    from tower_detector.geo.cover import TileCover
    from tower_detector.remote.pilot import sample_cover

    cover = TileCover(18, [10, 11, 12, 13], [0, 0, 5, 0], [4, 4, 9, 4])  # 16 tiles in 4 columns
    picked = sample_cover(cover, 4)
    xs, ys = (a.tolist() for a in next(picked.iter_batches()))
    assert list(zip(xs, ys)) == [(10, 2), (11, 2), (12, 7), (13, 2)]  # tile 2, 6, 10, 14 of 16: one a column
    assert cover.contains(xs, ys).all() and picked.count == 4
    assert sample_cover(cover, 100) is cover  # more than there are: all of them


def test_the_gpu_sampler_reads_nvidia_smi_and_says_why_when_it_cannot(tmp_path):
    """STUB: no GPU here, so a stand-in nvidia-smi on PATH answers as the real one does for these two queries."""
    from tower_detector.remote.pilot import GpuSampler

    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\ncase "$1" in --query-gpu=name) echo "NVIDIA T4";; *) echo 40; echo 60;; esac\n')
    fake.chmod(0o755)
    sampler = GpuSampler(interval=0.01, query=[str(fake), *GpuSampler().query[1:]],
                         name_query=[str(fake), "--query-gpu=name", "--format=csv,noheader"])
    sampler.start()
    for _ in range(1000):  # wait for two samples (no time limit asserted)
        if len(sampler.samples) >= 2:
            break
        time.sleep(0.01)
    sampler.stop()
    summary = sampler.summary()
    assert summary["utilisation_percent"] == 50 and summary["max_percent"] == 50 and summary["samples"] >= 2
    assert summary["name"] == "NVIDIA T4"
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate' >&2\nexit 9\n")
    broken = GpuSampler(interval=0.01, query=[str(fake)], name_query=[str(fake)])
    broken.start()
    broken.stop()
    assert broken.summary()["utilisation_percent"] is None
    assert "could not communicate" in broken.summary()["reason"]
    missing = GpuSampler(query=[str(tmp_path / "none" / "nvidia-smi")])
    missing.start()
    assert missing.summary() == {"utilisation_percent": None, "reason": f"no {tmp_path}/none/nvidia-smi", "name": None}


def test_shards_are_sized_to_the_timeout_and_the_workers():
    from tower_detector.common.errors import UserError
    from tower_detector.remote.capacity import size_shards

    def size(tiles, rate, workers=8, timeout=24, **kw):
        return size_shards(tiles, rate, timeout_hours=timeout, workers=workers, startup_minutes=5, **kw)

    # 50 M tiles at 150 tiles/s: 92.59 h of scoring; a shard may take 12 h less 5 min start-up: 7.77 -> 8 shards
    z = size(50_000_000, 150)
    assert z == {"shards": 8, "shard_hours": pytest.approx(92.593 / 8 + 5 / 60, abs=1e-3), "limit_hours": 12.0,
                 "fits": True, "by": "time"}
    # at 20 tiles/s: 694.4 h / 11.917 h = 58.3 -> 59, rounded up to 64 (8 rounds of 8), each 10.93 h
    z = size(50_000_000, 20)
    assert z["shards"] == 64 and z["shard_hours"] == pytest.approx(694.444 / 64 + 5 / 60, abs=1e-3)
    # 16 workers: the time needs 8, the fleet takes 16 (each still scores 5.8 h)
    assert size(50_000_000, 150, workers=16)["shards"] == 16 and size(50_000_000, 150, workers=16)["by"] == "workers"
    # 8 views a tile: 740.7 h -> 63 -> 64
    assert size(50_000_000, 150, views=8)["shards"] == 64
    # 1,000 tiles: seconds of work, one job
    assert size(1_000, 150) == {"shards": 1, "shard_hours": pytest.approx(1000 / 150 / 3600 + 5 / 60, abs=1e-3),
                                "limit_hours": 12.0, "fits": True, "by": "one"}
    # 1 M tiles at 150 tiles/s: 1.85 h fills 3 workers of 8 at half an hour each or more
    assert size(1_000_000, 150)["shards"] == 3
    # Batch's limit and the area's columns cap it, a multiple of the workers where one fits; then it may not fit
    z = size(50_000_000, 0.05)  # 277,778 h: 23,310 shards would be needed
    assert z["shards"] == 10_000 and not z["fits"]
    assert size(50_000_000, 0.05, workers=24)["shards"] == 9_984
    assert size(50_000_000, 20, columns=30)["shards"] == 24 and not size(50_000_000, 20, columns=30)["fits"]
    assert size(50_000_000, 20, columns=5)["shards"] == 5
    with pytest.raises(UserError, match="leaves no time to score after the 5 min start-up"):
        size(1_000, 150, timeout=1 / 6)


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit 2
# ---------------------------------------------------------------------------------------------
def stub(monkeypatch, operation, *, error=None, response=None):
    """STUB, for what moto cannot produce: botocore answers `operation` with AWS's error or response, in this
    process only; every other call goes to moto as before."""
    from botocore.client import BaseClient
    from botocore.exceptions import ClientError

    original = BaseClient._make_api_call

    def call(self, name, params):
        if name != operation:
            return original(self, name, params)
        if error:
            raise ClientError({"Error": {"Code": error[0], "Message": error[1]},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, name)
        return response

    monkeypatch.setattr(BaseClient, "_make_api_call", call)


def test_bad_submissions(remote, tiny_model, sample_scene, training_set, params_file):
    jobs_before = cli("remote", "jobs", "--events")[1][-1]["jobs"]
    predict = ["remote", "submit", "predict", "--model", tiny_model[0], "--area", sample_scene["area"],
               "--stack", "td"]
    message, _ = fails(*predict, "--yes", "--imagery", "https://t.example.com/{z}/{x}/{y}.png?access_token=abc123",
                       message="holds a secret in clear")
    assert "abc123" not in message
    fails(*predict, "--yes", "--imagery", "https://t.example.com/{z}/{x}/{y}.png?key=${NOPE}",
          message="no secret /tower-detector/NOPE is stored")
    fails(*predict, "--yes", "--imagery", sample_scene["imagery"], message="reachable from AWS")
    fails("remote", "submit", "predict", "--model", training_set, "--area", sample_scene["area"], "--stack", "td",
          "--yes", "--imagery", "https://t.example.com/{z}/{x}/{y}.png", message="no params.json")
    fails("remote", "submit", "train", "--data", sample_scene["dir"], "--stack", "td", "--yes",
          message="neither index.csv nor data.npz")
    fails(*predict, "--imagery", "https://t.example.com/{z}/{x}/{y}.png", message="needs --yes")
    fails(*predict, "--yes", "--imagery", "https://t.example.com/{z}/{x}/{y}.png", "--out", "s3://elsewhere/x",
          message="only the stack's bucket")
    fails("remote", "submit", "train", "--data", training_set, "--stack", "nosuch", "--yes",
          message="no stack 'nosuch' in us-east-1")
    fails("remote", "status", "no-such-job", message="no remote job 'no-such-job'")
    assert cli("remote", "jobs", "--events")[1][-1]["jobs"] == jobs_before  # nothing was submitted


def test_a_secret_in_clear_under_any_name_is_refused_and_never_stored(remote, tiny_model, sample_scene):
    """Every query value but a harmless parameter's (and any user:password@) must come as a ${NAME} secret."""
    jobs_before = cli("remote", "jobs", "--events")[1][-1]["jobs"]
    mark = "Qz7MARKER"
    predict = ["remote", "submit", "predict", "--model", tiny_model[0], "--area", sample_scene["area"],
               "--stack", "td", "--yes"]
    for name in ("connectId", "auth", "code", "session", "zzq"):
        imagery = f"https://t.example.com/{{z}}/{{x}}/{{y}}.png?format=png&{name}={mark}"
        message, events = fails(*predict, "--imagery", imagery, message=f"holds a secret in clear ({name})")
        assert mark not in json.dumps(events)
    message, events = fails(*predict, "--imagery", f"https://me:{mark}@t.example.com/{{z}}/{{x}}/{{y}}.png",
                            message="holds a secret in clear (user:password@)")
    assert mark not in json.dumps(events)
    assert cli("remote", "jobs", "--events")[1][-1]["jobs"] == jobs_before  # nothing was submitted
    home = remote["work"] / "home"
    assert not [p for p in home.rglob("*") if p.is_file() and mark in p.read_text(errors="replace")]


def test_credentials_region_and_profile(remote, monkeypatch):
    fails("remote", "setup", "--check", "--stack", "td", "--region", "xx-nowhere-1",
          message="unknown AWS region 'xx-nowhere-1'")
    fails("remote", "setup", "--check", "--stack", "td", "--profile", "nobody", message="AWS profile 'nobody'")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    fails("remote", "setup", "--check", "--stack", "td", message="no AWS credentials")
    fails("remote", "status", "train1", message="no AWS credentials")


def test_a_bucket_of_another_account_is_refused(remote, training_set, params_file, monkeypatch):
    from tests.fakes.s3proxy import FaultProxy

    # S3 answers 403 for a bucket that exists in another account: the name is taken
    with FaultProxy(remote["s3"].meta.endpoint_url, every=0,
                    deny=lambda method, path: path.startswith("/someone-elses-bucket")) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        fails("remote", "setup", "--stack", "td-other", "--bucket", "someone-elses-bucket", "--template",
              remote["template"], message="bucket 'someone-elses-bucket' belongs to another account (403)")
        assert proxy.injected["deny"] >= 1
    # and credentials that may not use the stack's bucket (403 on every S3 request)
    with FaultProxy(remote["s3"].meta.endpoint_url, every=0, deny=True) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        fails("remote", "submit", "train", "--data", training_set, "--params", params_file, "--stack", "td",
              "--name", "denied", "--yes", message="access denied")


def test_a_missing_queue_and_quotas(remote, training_set, params_file, monkeypatch):
    rc, events, text = cli("remote", "setup", "--stack", "td-noqueue", "--template", remote["template"], "--events")
    assert rc == 0, text[-2000:]
    queue = events[-1]["outputs"]["JobQueue"]
    push_image(events[-1]["outputs"]["RepositoryUri"], "noqueue")
    remote["batch"].update_job_queue(jobQueue=queue, state="DISABLED")
    remote["batch"].delete_job_queue(jobQueue=queue)
    train = ["remote", "submit", "train", "--data", training_set, "--params", params_file, "--yes"]
    fails(*train, "--stack", "td-noqueue", "--name", "noqueue", message="does not exist")

    with monkeypatch.context() as m:
        # STUB: moto has no EC2 quotas; a new account's spot quota for G instances is 0 vCPUs
        stub(m, "GetServiceQuota", response={"Quota": {"QuotaCode": "L-3819A6DF", "Value": 0.0}})
        fails(*train, "--stack", "td", "--name", "noquota", message="All G and VT Spot Instance Requests")
        message, _ = fails("remote", "setup", "--check", "--stack", "td", message="L-3819A6DF")
    with monkeypatch.context() as m:
        # STUB: moto never refuses a stack for the account's limit; CloudFormation answers LimitExceededException
        stub(m, "CreateStack", error=("LimitExceededException", "Limit on the number of stacks exceeded"))
        fails("remote", "setup", "--stack", "td-toomany", "--template", remote["template"],
              message="AWS quota reached for stack td-toomany (LimitExceededException")


def test_estimate_for_a_country():
    from tower_detector.remote.jobs import estimate_predict, estimate_text

    e = estimate_predict(50_000_000, 25, 10_000, tiles_per_second=150, spot_price=0.20, parallel=16)
    assert e["gpu_hours"] == pytest.approx(50e6 / 150 / 3600, abs=1e-3)  # 92.6
    assert e["instance_hours"] == pytest.approx(92.593 + 25 * 5 / 60, abs=1e-2)
    assert e["compute_dollars"] == pytest.approx(e["instance_hours"] * 0.20, abs=0.01)
    assert e["s3_puts"] == 10_000 + 4 * 25 + 2 and e["s3_dollars"] < 0.1
    assert e["wall_hours"] == pytest.approx(2 * (92.593 / 25 + 5 / 60), abs=0.01)
    eight = estimate_predict(50_000_000, 25, 10_000, tiles_per_second=150, spot_price=0.20, parallel=16, views=8)
    assert eight["gpu_hours"] == pytest.approx(8 * e["gpu_hours"], abs=1e-2)  # every tile scored 8 times
    assert "GPU-hours at 150 tiles/s per GPU (an assumption: --tiles-per-second) x 8 views a tile" in \
        estimate_text(eight)


# ---------------------------------------------------------------------------------------------
# watching a job: rate, ETA, cost so far, failures by kind
# ---------------------------------------------------------------------------------------------
H = 3_600_000  # an hour in Batch's milliseconds


def watched_children():
    """Three children two hours into a job: 0 reclaimed after an hour and running again since 1:05, 1 failed for
    good with exit 78 after half an hour, 2 still waiting for capacity."""
    return [
        {"status": "RUNNING", "startedAt": 65 * 60_000,
         "attempts": [{"startedAt": 0, "stoppedAt": H, "statusReason": "Host EC2 (instance i-0abc) terminated.",
                       "container": {}}]},
        {"status": "FAILED", "attempts": [{"startedAt": 10 * 60_000, "stoppedAt": 40 * 60_000,
                                           "statusReason": "Essential container in task exited",
                                           "container": {"exitCode": 78}}]},
        {"status": "RUNNABLE", "statusReason": "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the "
                                               "capacity requested for instance type [g5.xlarge]", "attempts": []},
    ]


def test_the_rate_eta_and_cost_of_a_job_so_far_by_hand():
    from tower_detector.remote import watch

    now = 2 * H
    spans = watch.worker_intervals(watched_children(), now)
    # child 0: 0-60 min and 65-120 min; child 1: 10-40 min; child 2 never ran
    assert sorted(spans) == [(0, H), (10 * 60_000, 40 * 60_000), (65 * 60_000, 2 * H)]
    assert watch.worker_hours(spans) == pytest.approx((60 + 55 + 30) / 60)  # 2.4167 worker-hours
    # 87,000 tiles: 87,000 / 7,200 s of wall-clock = 12.08 tiles/s; / 8,700 worker-seconds = 10 per worker
    rate = watch.job_rate(87_000, spans, now, running=1)
    assert rate["elapsed_seconds"] == 7200 and rate["worker_seconds"] == 8700
    assert rate["tiles_per_second"] == pytest.approx(87_000 / 7200)
    assert rate["tiles_per_worker_second"] == pytest.approx(10.0)
    # 13,000 tiles left at 10 tiles/s a worker: 1,300 s with the one worker running, 325 s with four
    assert watch.eta_seconds(13_000, 10.0, 1) == pytest.approx(1300)
    assert watch.eta_seconds(13_000, 10.0, 4) == pytest.approx(325)
    assert watch.eta_seconds(13_000, 10.0, 0) is None  # nothing runs: no ETA, rather than a false one
    assert watch.eta_seconds(0, None, 0) == 0
    # once nothing runs, the wall clock stops at the last attempt's end, not now
    ended = watch.job_rate(87_000, spans, 10 * H, running=0)
    assert ended["elapsed_seconds"] == 7200
    assert watch.job_rate(0, [], now, running=0)["tiles_per_second"] is None
    assert watch.duration_text(1300) == "21 min" and watch.duration_text(7_500) == "2 h 05 min"


def test_failed_attempts_and_children_are_told_apart_by_kind():
    from tower_detector.remote import watch

    def attempt(status_reason="Essential container in task exited", reason=None, code=None):
        return {"statusReason": status_reason, "container": {"reason": reason, "exitCode": code}}

    cases = {
        watch.SPOT_RECLAIM: attempt("Host EC2 (instance i-0abc) terminated."),
        watch.RESUME: attempt(code=75),
        watch.NO_GPU: attempt(code=78),
        watch.TIMEOUT: attempt("Job attempt duration exceeded timeout"),
        watch.START_UP: attempt("Task failed to start", "ResourceInitializationError: unable to pull secrets"),
        watch.OTHER: attempt(code=1),
        None: attempt(code=0),
    }
    for kind, a in cases.items():
        assert watch.attempt_kind(a) == kind, (kind, a)
    assert watch.attempt_kind(attempt(reason="CannotPullContainerError: ref pull has been retried")) == watch.START_UP
    counts = watch.failure_counts(watched_children())
    assert counts == {"attempts": {"spot_reclaim": 1, "no_gpu": 1}, "children": {"no_gpu": 1}}
    # a child cancelled before it ran failed with no attempt at all
    assert watch.failure_counts([{"status": "FAILED", "attempts": []}])["children"] == {"other": 1}


# ---------------------------------------------------------------------------------------------
# capacity: the workers that can really run
# ---------------------------------------------------------------------------------------------
def test_the_quota_counts_whole_instances_and_sets_the_workers():
    from tower_detector.remote.capacity import capacity_text, workers_at_once
    from tower_detector.remote.jobs import estimate_predict, estimate_text

    mix = {"g4dn.xlarge": (4, 1), "g4dn.2xlarge": (8, 1), "g5.xlarge": (4, 1), "g5.2xlarge": (8, 1)}
    # a quota of 8 vCPUs and 8-vCPU single-GPU sizes in the mix: one worker, not 8 / 4 = 2, nor 64 / 4 = 16
    c = workers_at_once(mix, 4, 64, {"g": 8})
    assert (c["workers"], c["workers_quota"], c["workers_ce"]) == (1, 1, 8)
    assert c["limited_by"] == "quota" and c["worst_type"] == "g5.2xlarge" and c["vcpus_per_worker"] == 8
    assert "the quota, not the budget, sets the time" in capacity_text(c)
    assert "ask for a spot quota of 64 vCPUs" in capacity_text(c)
    # 4-vCPU sizes only: the quota's 8 vCPUs hold two workers
    assert workers_at_once({"g4dn.xlarge": (4, 1)}, 4, 64, {"g": 8})["workers"] == 2
    # no quota known (Service Quotas unreachable): the compute environment's maximum alone
    c = workers_at_once(mix, 4, 64)
    assert c["workers"] == 8 and c["limited_by"] == "compute environment"
    assert "the quota" not in capacity_text(c)
    # a quota above the maximum: the maximum sets it
    assert workers_at_once(mix, 4, 64, {"g": 512})["limited_by"] == "compute environment"
    # a 4-GPU instance holds four workers; a quota below its 48 vCPUs starts none of it
    assert workers_at_once({"g5.12xlarge": (48, 4)}, 4, 96, {"g": 96})["workers"] == 8
    assert workers_at_once({"g5.12xlarge": (48, 4)}, 4, 96, {"g": 40})["workers"] == 0

    # the estimate of a country uses the one worker: 50 M tiles at 150 tiles/s, 25 shards one after another
    one = dict(workers_at_once(mix, 4, 64, {"g": 8}), spot_price=0.28, price_source="assumed prices",
               price_type="g4dn.2xlarge")
    e = estimate_predict(50_000_000, 25, 10_000, tiles_per_second=150, capacity=one)
    assert e["parallel"] == 1 and e["spot_price"] == 0.28
    assert e["wall_hours"] == pytest.approx(25 * (92.593 / 25 + 5 / 60), abs=0.01)  # about 95 h, not 7.5
    assert "the quota, not the budget, sets the time" in estimate_text(e)
    eight = estimate_predict(50_000_000, 25, 10_000, tiles_per_second=150,
                             capacity=dict(one, **workers_at_once(mix, 4, 64)))
    assert eight["parallel"] == 8 and eight["wall_hours"] == pytest.approx(4 * (92.593 / 25 + 5 / 60), abs=0.01)


def test_a_job_pins_the_worker_image_by_digest(remote, training_set, params_file):
    repo = remote["outputs"]["RepositoryUri"]
    first = submit_train(training_set, params_file, "pinned1")
    digest = push_image(repo, "first")  # the image pushed by the fixture (put again: the same digest)
    batch = remote["batch"]

    def image_of(job_id):
        jd = batch.describe_jobs(jobs=[job_id])["jobs"][0]["jobDefinition"]
        return batch.describe_job_definitions(jobDefinitions=[jd])["jobDefinitions"][0]["containerProperties"]["image"]

    assert image_of(first["job_id"]) == f"{repo}@{digest}"
    newer = push_image(repo, "second")  # a push of :latest while the first job runs
    assert newer != digest
    second = submit_train(training_set, params_file, "pinned2")
    assert image_of(second["job_id"]) == f"{repo}@{newer}" and image_of(first["job_id"]) == f"{repo}@{digest}"
    push_image(repo, "first")  # as the fixture left it


def test_submit_plans_with_the_accounts_quota_and_spot_prices(remote, tiny_model, sample_scene, monkeypatch):
    predict = ["remote", "submit", "predict", "--model", tiny_model[0], "--area", sample_scene["area"], "--stack",
               "td", "--imagery", "https://tiles.example.com/{z}/{x}/{y}.png", "--shards", 4, "--yes", "--events"]
    # moto answers describe_instance_types (vCPUs, GPUs) and describe_spot_price_history (its prices are 0.00001)
    rc, events, text = cli(*predict, "--name", "planned")
    assert rc == 0, text[-2000:]
    e = next(ev for ev in events if ev.get("estimate"))["estimate"]
    assert e["capacity"]["price_source"] == "the spot price history" and e["spot_price"] == pytest.approx(1e-5)
    assert e["capacity"]["workers"] == 8 and e["capacity"]["vcpus_per_worker"] == 8  # 64 vCPUs of 8-vCPU sizes
    assert e["parallel"] == 4  # 4 shards
    with monkeypatch.context() as m:
        # STUB: moto has no EC2 quotas; an account whose spot quota for G instances is 8 vCPUs
        stub(m, "GetServiceQuota", response={"Quota": {"QuotaCode": "L-3819A6DF", "Value": 8.0}})
        rc, events, text = cli(*predict, "--name", "quota8", "--spot-price", 0.3)
    assert rc == 0, text[-2000:]
    e = next(ev for ev in events if ev.get("estimate"))["estimate"]
    assert e["parallel"] == 1 and e["capacity"]["limited_by"] == "quota" and e["spot_price"] == 0.3
    assert "the quota, not the budget, sets the time" in text


# ---------------------------------------------------------------------------------------------
# a job-wide imagery rate limit, shared out among the children
# ---------------------------------------------------------------------------------------------
def rate_limit_of(command):
    return float(command[command.index("--rate-limit") + 1])


def test_the_rate_limit_is_shared_among_the_children_at_once(remote, tiny_model, sample_scene, tmp_path, monkeypatch):
    batch = remote["batch"]
    with TileServer(sample_scene["imagery"]) as server:
        predict = ["remote", "submit", "predict", "--model", tiny_model[0], "--area", sample_scene["area"],
                   "--stack", "td", "--imagery", server.template("png"), "--shards", 4, "--checkpoint-every", 8,
                   "--yes", "--events"]
        # 4 shards, 8 workers at once (moto's 64 vCPUs of 8-vCPU sizes): 4 children at once, 40 / 4 = 10 each
        rc, events, text = cli(*predict, "--rate-limit", 40, "--name", "limited")
        assert rc == 0, text[-2000:]
        e = next(ev for ev in events if ev.get("estimate"))["estimate"]
        assert (e["parallel"], e["rate_limit"], e["rate_limit_per_child"]) == (4, 40, 10)
        # 10 tiles/s a child, below the 150 its GPU scores: the rate limit sets the time
        assert e["limited_by_rate_limit"] and e["tiles_per_second_per_worker"] == 10
        assert "shared by the 4 children at once: 10 requests/s each" in text
        assert "the rate limit, not the GPUs, sets the time" in text
        job = batch.describe_jobs(jobs=[events[-1]["job_id"]])["jobs"][0]
        command = job["container"]["command"]
        assert job["arrayProperties"]["size"] == 4 and rate_limit_of(command) == 10

        # a child as Batch runs it: its 16 tiles at 10 requests a second, by the server's clock at least 1.5 s
        env = dict(os.environ, AWS_BATCH_JOB_ARRAY_INDEX="2", TOWER_DETECTOR_WORK=str(tmp_path / "w"))
        child = subprocess.run([sys.executable, "-m", "tower_detector", *command], env=env, capture_output=True,
                               text=True, timeout=300)
        assert child.returncode == 0, child.stderr[-2000:]
        assert "at most 10 imagery requests a second (--rate-limit)" in child.stdout
        arrivals = list(server.arrivals)
        assert len(arrivals) == 16 and max(arrivals) - min(arrivals) >= 15 / 10 - 0.05

    # Batch's view at the end: children 1 and 3 out of attempts; the retry shares the 40 between its 2 children
    moto_job(job["jobId"]).status = "FAILED"
    for i in range(4):
        moto_job(f"{job['jobId']}:{i}").status = "FAILED" if i in (1, 3) else "SUCCEEDED"
    rc, events, text = cli("remote", "retry", "limited", "--events")
    assert rc == 0, text[-2000:]
    assert events[-1]["rate_limit_per_child"] == 20 and "20 requests/s each" in text
    retried = batch.describe_jobs(jobs=[events[-1]["job_id"]])["jobs"][0]["container"]["command"]
    assert rate_limit_of(retried) == 20 and [a for a in retried if a != "20.0"] == [a for a in command if a != "10.0"]

    # 4 shards, but an account whose spot quota runs one worker: one child at a time gets it all
    with monkeypatch.context() as m:
        # STUB: moto has no EC2 quotas; an account whose spot quota for G instances is 8 vCPUs
        stub(m, "GetServiceQuota", response={"Quota": {"QuotaCode": "L-3819A6DF", "Value": 8.0}})
        rc, events, text = cli(*predict, "--rate-limit", 1000, "--name", "limited-quota8")
    assert rc == 0, text[-2000:]
    e = next(ev for ev in events if ev.get("estimate"))["estimate"]
    assert (e["parallel"], e["rate_limit_per_child"], e["limited_by_rate_limit"]) == (1, 1000, False)
    assert "shared by the 1 child at once: 1000 requests/s each, more than the GPU scores" in text
    assert e["tiles_per_second_per_worker"] == 150  # the GPUs set the time
    assert rate_limit_of(batch.describe_jobs(jobs=[events[-1]["job_id"]])["jobs"][0]["container"]["command"]) == 1000

    # imagery that makes no requests a tile has nothing to limit
    fails(*[a if a != predict[predict.index("--imagery") + 1] else f"s3://{remote['bucket']}/tiles" for a in predict],
          "--rate-limit", 5, message="--rate-limit limits the requests to an XYZ tile server")


# ---------------------------------------------------------------------------------------------
# the same worker under Kubernetes
# ---------------------------------------------------------------------------------------------
def test_the_worker_takes_its_shard_from_batch_or_a_kubernetes_indexed_job():
    from tower_detector.common.errors import UserError
    from tower_detector.remote.worker import shard_of

    assert shard_of(3, {"AWS_BATCH_JOB_ARRAY_INDEX": "2"}) == "2/3"
    assert shard_of(3, {"JOB_COMPLETION_INDEX": "1"}) == "1/3"
    assert shard_of(3, {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "JOB_COMPLETION_INDEX": "1"}) == "0/3"  # Batch's first
    assert shard_of(1, {}) == "0/1"
    for env in ({}, {"JOB_COMPLETION_INDEX": "3"}, {"JOB_COMPLETION_INDEX": "x"}):
        with pytest.raises(UserError):
            shard_of(3, env)


def test_an_indexed_job_manifest_is_valid_against_the_kubernetes_schema(tmp_path):
    import kubernetes_validate

    path = tmp_path / "job.json"
    args = ["remote", "k8s-manifest", "predict", "--model", "s3://b/inputs/model.tar", "--area", "s3://b/area.geojson",
            "--imagery", "https://tiles.example.com/{z}/{x}/{y}.jpg?access_token=${TOKEN}", "--shards", 12,
            "--parallelism", 4, "--out", "s3://b/jobs/pak/results", "--image",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/td-worker@sha256:" + "ab" * 32, "--name", "pak1",
            "--manifest", path]
    rc, events, text = cli(*args, "--events")
    assert rc == 0, text[-2000:]
    job = json.loads(path.read_text())
    assert job == events[-1]["manifest"]
    # every field known to Kubernetes (strict: an unknown or misspelt field fails), every type right
    kubernetes_validate.validate(job, "1.33.0", strict=True)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 12, 4)
    container = spec["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["args"][:3] == ["remote", "worker", "predict"]
    assert container["args"][container["args"].index("--shards") + 1] == "12" and "--shard" not in container["args"]
    assert "${TOKEN}" in " ".join(container["args"])  # the reference; the value comes from the Secret
    assert container["envFrom"] == [{"secretRef": {"name": "tower-detector"}}]
    assert {"name": "TOWER_DETECTOR_REQUIRE_GPU", "value": "1"} in container["env"]
    # retried: evictions and the worker's exit 75; anything else fails that shard
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[-1]["onExitCodes"] == {"containerName": "worker", "operator": "NotIn", "values": [75]}
    # a misspelt field is what the schema check catches
    broken = json.loads(path.read_text())
    broken["spec"]["completionsMode"] = broken["spec"].pop("completionMode")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.33.0", strict=True)

    assert "--rate-limit" not in container["args"]  # none given: no limit

    # --rate-limit R for the job: each pod R / the pods at once (--parallelism, else one per shard)
    for argv, rate, share in ((args, 100, 25), ([a for a in args if a not in ("--parallelism", 4)], 90, 7.5)):
        rc, events, text = cli(*argv, "--rate-limit", rate, "--events")
        assert rc == 0, text[-2000:]
        assert f"(--rate-limit {rate}: {share:g} requests/s each)" in events[-1]["message"]
        job = json.loads(path.read_text())
        kubernetes_validate.validate(job, "1.33.0", strict=True)
        pod = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert float(pod[pod.index("--rate-limit") + 1]) == share, pod

    # bad input: one line, exit 2
    base = args[:-2]
    fails(*base, "--imagery", "https://t.example.com/{z}/{x}/{y}.png?key=abc123", message="holds a secret in clear")
    fails(*[a if a != "s3://b/inputs/model.tar" else "models/m1" for a in base], message="give an s3:// URI")
    fails(*[a for a in base if a not in ("--shards", 12)], message="needs --shards N")
    fails(*base[:-2], "--name", "Pak_1", message="a Kubernetes job name")
    fails(*[a if not a.startswith("https://tiles.") else "s3://b/tiles" for a in map(str, base)], "--rate-limit", 5,
          message="--rate-limit limits the requests to an XYZ tile server")
