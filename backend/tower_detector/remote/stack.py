"""`tower-detector remote setup`: the AWS side, from the CloudFormation template kept with the code (stack.yaml).

setup creates the stack, or updates it (parameters not given keep their values), waits, and prints its outputs;
--check only validates the template and reports on what is there: the stack, the compute environment, the queue,
the worker image in ECR, and the account's spot quota for GPU instances, which is 0 on new accounts (jobs would
wait in RUNNABLE for ever).
"""

import os
import re

from ..common.errors import UserError
from .aws import error_code

TEMPLATE = os.path.join(os.path.dirname(__file__), "stack.yaml")
DEFAULT_STACK = "tower-detector"
DEFAULT_INSTANCE_TYPES = "g4dn.xlarge,g4dn.2xlarge,g5.xlarge,g5.2xlarge"


def stack_outputs(aws, stack):
    """{output key: value} of a complete stack; UserError when it is missing or not usable."""
    info = describe_stack(aws, stack)
    if info is None:
        raise UserError(f"no stack {stack!r} in {aws.region}: run `tower-detector remote setup` first "
                        "(or pass --stack / --region)")
    status = info["StackStatus"]
    if not status.endswith("_COMPLETE") or status.startswith(("DELETE", "ROLLBACK")):
        raise UserError(f"stack {stack!r} is {status}: run `tower-detector remote setup --check` to see why")
    return {o["OutputKey"]: o["OutputValue"] for o in info.get("Outputs", [])}


def describe_stack(aws, stack):
    from botocore.exceptions import ClientError

    aws.account  # noqa: B018 - credentials and region first, with their own messages
    try:
        return aws.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as exc:
        if error_code(exc)[0] == "ValidationError" and "does not exist" in str(exc):
            return None
        from .aws import raise_user_error

        raise_user_error(exc, f"stack {stack}", aws.region)
        raise


def setup(aws, stack=DEFAULT_STACK, *, bucket=None, vpc=None, subnets=None, instance_types=None, max_vcpus=None,
          image_tag=None, template=None, check=False, log=print, root_volume_gib=None, alert_email=None):
    """Deploy or update the stack (check=True: only look); returns a summary dict with the outputs and problems.
    alert_email: an address for the job alerts; "" removes them; None keeps what the stack has."""
    if alert_email and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", alert_email):
        raise UserError(f"--alert-email {alert_email!r} is not an e-mail address")
    body = _read_template(template)
    validated = aws.call("cloudformation", "validate_template", what="the stack template", TemplateBody=body)
    existing = describe_stack(aws, stack)
    if check:
        return _check(aws, stack, existing)
    if existing is not None and existing["StackStatus"] in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"):
        raise UserError(f"stack {stack} is {existing['StackStatus']} after a failed creation "
                        f"({_first_failure(aws, stack)}): delete it (aws cloudformation delete-stack --stack-name "
                        f"{stack}) and run setup again")

    params = {}
    if existing is None or vpc or subnets:
        vpc, subnets = _network(aws, vpc, subnets)
        params.update(VpcId=vpc, SubnetIds=",".join(subnets))
    if existing is None or instance_types:
        params["InstanceTypes"] = instance_types or DEFAULT_INSTANCE_TYPES
    if max_vcpus is not None:
        params["MaxvCpus"] = str(max_vcpus)
    if image_tag:
        params["WorkerImageTag"] = image_tag
    if root_volume_gib is not None:
        params["RootVolumeGiB"] = str(root_volume_gib)
    if alert_email is not None:
        params["AlertEmail"] = alert_email
    if bucket:
        if existing is not None:
            raise UserError("--bucket only applies when the stack is created; the stack keeps its bucket")
        _check_new_bucket(aws, bucket)
        params["BucketName"] = bucket
    declared = {p["ParameterKey"] for p in validated.get("Parameters", [])}
    parameters = [{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()]
    if existing is not None:  # keep what was given before
        kept = {p["ParameterKey"] for p in existing.get("Parameters", [])} & declared
        parameters += [{"ParameterKey": k, "UsePreviousValue": True} for k in sorted(kept - set(params))]
    common = dict(StackName=stack, TemplateBody=body, Parameters=parameters, Capabilities=["CAPABILITY_IAM"],
                  Tags=[{"Key": "project", "Value": "tower-detector"}])
    if existing is None:
        log(f"creating stack {stack} in {aws.region} (a few minutes)")
        aws.call("cloudformation", "create_stack", what=f"stack {stack}", **common)
        waiter, action = "stack_create_complete", "created"
    else:
        from botocore.exceptions import ClientError

        log(f"updating stack {stack} in {aws.region}")
        try:
            aws.client("cloudformation").update_stack(**common)
            waiter, action = "stack_update_complete", "updated"
        except ClientError as exc:
            if "No updates are to be performed" not in str(exc):
                from .aws import raise_user_error

                raise_user_error(exc, f"stack {stack}", aws.region)
                raise
            waiter, action = None, "up to date"
    if waiter:
        _wait(aws, stack, waiter)
    outputs = stack_outputs(aws, stack)
    notes = []
    if alert_email:
        notes.append(f"alerts go to {alert_email} once it confirms the subscription (SNS sends it a link)")
    return {"stack": stack, "region": aws.region, "action": action, "outputs": outputs, "problems": [],
            "notes": notes}


def _read_template(template):
    try:
        with open(template or TEMPLATE) as f:
            return f.read()
    except OSError as exc:
        raise UserError(f"cannot read the template {template}: {exc.strerror or exc}") from None


def _network(aws, vpc, subnets):
    """The VPC and subnets to use: given, or the region's default VPC and its subnets."""
    if subnets:
        subnets = [s.strip() for s in subnets.split(",") if s.strip()]
    if vpc is None:
        if subnets:
            found = aws.call("ec2", "describe_subnets", what="the subnets", SubnetIds=subnets)["Subnets"]
            vpc = found[0]["VpcId"]
        else:
            vpcs = aws.call("ec2", "describe_vpcs", what="the default VPC",
                            Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
            if not vpcs:
                raise UserError(f"no default VPC in {aws.region}: pass --vpc and --subnets (subnets with a route to "
                                "the internet)")
            vpc = vpcs[0]["VpcId"]
    if not subnets:
        subnets = [s["SubnetId"] for s in aws.call("ec2", "describe_subnets", what=f"the subnets of {vpc}",
                                                   Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]]
        if not subnets:
            raise UserError(f"VPC {vpc} has no subnets: pass --subnets")
    return vpc, subnets


def _check_new_bucket(aws, bucket):
    """A bucket name for a new stack: it must not exist yet (CloudFormation creates it)."""
    from botocore.exceptions import ClientError

    try:
        aws.client("s3").head_bucket(Bucket=bucket)
    except ClientError as exc:
        code, status = error_code(exc)
        if status == 404 or code in ("404", "NoSuchBucket"):
            return
        if status == 403:
            raise UserError(f"bucket {bucket!r} belongs to another account (403): choose another --bucket name, "
                            "or leave it out and let CloudFormation name one") from None
        from .aws import raise_user_error

        raise_user_error(exc, f"s3://{bucket}", aws.region)
        raise
    raise UserError(f"bucket {bucket!r} already exists; the stack creates its own: choose a new --bucket name "
                    "or leave it out")


def _wait(aws, stack, waiter):
    from botocore.exceptions import WaiterError

    try:
        aws.client("cloudformation").get_waiter(waiter).wait(StackName=stack,
                                                             WaiterConfig={"Delay": 10, "MaxAttempts": 360})
    except WaiterError:
        raise UserError(f"stack {stack} failed: {_first_failure(aws, stack)}") from None


def _first_failure(aws, stack):
    """The earliest failed resource of the stack's latest operation, as one line."""
    events = aws.call("cloudformation", "describe_stack_events", what=f"stack {stack}", StackName=stack)
    failed = [e for e in events.get("StackEvents", []) if e.get("ResourceStatus", "").endswith("_FAILED")]
    if not failed:
        return "see the CloudFormation console"
    first = failed[-1]  # events come newest first
    reason = " ".join(str(first.get("ResourceStatusReason", "")).split())
    return f"{first['LogicalResourceId']} ({first['ResourceType']}): {reason}"


def _check(aws, stack, existing):
    """What is there and what would stop jobs from running; problems are lines for people."""
    if existing is None:
        raise UserError(f"no stack {stack!r} in {aws.region}: run `tower-detector remote setup`")
    problems = []
    status = existing["StackStatus"]
    if not status.endswith("_COMPLETE") or status.startswith(("DELETE", "ROLLBACK")):
        problems.append(f"stack {stack} is {status}: {_first_failure(aws, stack)}")
        return {"stack": stack, "region": aws.region, "action": "checked", "outputs": {}, "problems": problems}
    outputs = {o["OutputKey"]: o["OutputValue"] for o in existing.get("Outputs", [])}
    ce = aws.call("batch", "describe_compute_environments", what="the compute environment",
                  computeEnvironments=[outputs["ComputeEnvironment"]])["computeEnvironments"]
    if not ce or ce[0].get("status") != "VALID" or ce[0].get("state") != "ENABLED":
        problems.append(f"compute environment: {ce[0].get('status') if ce else 'missing'} "
                        f"{(ce[0].get('statusReason') or '') if ce else ''}".strip())
    queues = aws.call("batch", "describe_job_queues", what="the job queue",
                      jobQueues=[outputs["JobQueue"]])["jobQueues"]
    if not queues or queues[0].get("status") != "VALID" or queues[0].get("state") != "ENABLED":
        problems.append(f"job queue: {queues[0].get('status') if queues else 'missing'}")
    repo_uri = outputs["RepositoryUri"]
    repo = repo_uri.split("/", 1)[1]
    tag = next((p["ParameterValue"] for p in existing.get("Parameters", []) if p["ParameterKey"] == "WorkerImageTag"),
               "latest")
    images = aws.call("ecr", "list_images", what=f"ECR repository {repo}", repositoryName=repo,
                      filter={"tagStatus": "TAGGED"})["imageIds"]
    if not any(i.get("imageTag") == tag for i in images):
        problems.append(f"no worker image {repo_uri}:{tag} yet: build and push it (docs/aws.md)")
    from .capacity import capacity_text, plan

    vcpus = next((p["ParameterValue"] for p in existing.get("Parameters", []) if p["ParameterKey"] == "JobVcpus"), "4")
    capacity = plan(aws, ce[0].get("computeResources", {}) if ce else {}, int(vcpus))
    problems += capacity.pop("problems")
    return {"stack": stack, "region": aws.region, "action": "checked", "status": status, "outputs": outputs,
            "problems": problems, "capacity": capacity, "notes": [capacity_text(capacity)]}
