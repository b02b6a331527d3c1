"""One AWS session (standard credential chain, named profiles, a region) whose errors are one-line UserErrors.

Every remote command talks to AWS through Aws.call(service, operation, ...). Errors that are the user's to fix
(no or rejected credentials, an unknown region, access denied, a missing bucket/queue/stack, a quota) become a
UserError with one line and exit 2; anything else (AWS failing) is raised as it is and exits 1. Messages are
redacted and never carry a secret value: AWS does not echo parameter values in its errors, and we never put one
in a message.
"""

import os

from ..common.errors import UserError, one_line
from ..common.redaction import redact

# error codes across services, grouped by what the user has to do about them
_CREDENTIALS = {"InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch", "InvalidAccessKeyId",
                "ExpiredToken", "ExpiredTokenException", "AuthFailure", "InvalidToken"}
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Forbidden", "AllAccessDisabled",
           "AuthorizationError"}
_QUOTA = {"LimitExceededException", "LimitExceeded", "ServiceQuotaExceededException", "TooManyBuckets",
          "ParameterLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "InstanceLimitExceeded"}
_MISSING = {"NoSuchBucket", "ParameterNotFound", "RepositoryNotFoundException", "ResourceNotFoundException",
            "NoSuchEntity"}


class Aws:
    """boto3 clients for one profile and region, made on first use; see the module docstring."""

    def __init__(self, profile=None, region=None):
        import boto3
        from botocore.exceptions import BotoCoreError, ProfileNotFound

        try:
            self.session = boto3.session.Session(profile_name=profile, region_name=region)
        except ProfileNotFound:
            raise UserError(f"AWS profile {profile!r} is not in your AWS config (~/.aws/config)") from None
        except BotoCoreError as exc:
            raise UserError(f"cannot read the AWS configuration: {one_line(exc)}") from None
        self.profile = profile
        self.region = self.session.region_name
        if not self.region:
            raise UserError("no AWS region: pass --region, or set AWS_REGION or a region in the profile")
        try:
            self.partition = self.session._session.get_partition_for_region(self.region)
        except Exception:  # botocore's UnknownRegionError: matches no partition's region pattern
            raise UserError(f"unknown AWS region {self.region!r} (for example us-east-1, eu-west-1)") from None
        # the results store and the imagery sources make their own boto3 sessions: give them the same profile
        # and region, in this process only
        if profile:
            os.environ["AWS_PROFILE"] = profile
        os.environ["AWS_DEFAULT_REGION"] = self.region
        self._clients = {}
        self._account = None

    def client(self, service):
        if service not in self._clients:
            from botocore.config import Config

            config = Config(retries={"mode": "standard", "total_max_attempts": 6}, connect_timeout=20, read_timeout=60)
            self._clients[service] = self.session.client(service, config=config)
        return self._clients[service]

    def call(self, service, operation, *, what=None, **kwargs):
        """client(service).operation(**kwargs); user errors -> UserError naming `what` (or the operation)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client(service), operation)(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise_user_error(exc, what or f"{service} {operation}", self.region)
            raise

    def pages(self, service, operation, key, *, what=None, **kwargs):
        """Every item under `key` of a paginated operation."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in self.client(service).get_paginator(operation).paginate(**kwargs):
                yield from page.get(key, [])
        except (BotoCoreError, ClientError) as exc:
            raise_user_error(exc, what or f"{service} {operation}", self.region)
            raise

    @property
    def account(self):
        """The account id of the credentials: the first call of most commands, so credential trouble shows here."""
        if self._account is None:
            self._account = self.call("sts", "get_caller_identity", what="your AWS identity")["Account"]
        return self._account


def error_code(exc):
    """(code, HTTP status) of a botocore ClientError."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")), response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def raise_user_error(exc, what, region=None):
    """Raise a one-line UserError when `exc` is the user's to fix; return otherwise (the caller re-raises)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        CredentialRetrievalError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        raise UserError("no AWS credentials: pass --profile, set AWS_PROFILE or AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY, or run where an instance role is available") from None
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        raise UserError(f"cannot reach AWS for {what} in region {region}: {redact(one_line(exc))}") from None
    if not isinstance(exc, ClientError):
        return
    code, status = error_code(exc)
    message = redact(one_line(exc.response.get("Error", {}).get("Message") or code or status))
    if code in _CREDENTIALS:
        raise UserError(f"AWS rejected the credentials ({code}) for {what}: check the profile or keys") from None
    if code in _DENIED or status == 403:
        raise UserError(f"access denied to {what} ({code or status}): it belongs to another account, or your "
                        "credentials may not use it") from None
    if code in _QUOTA:
        raise UserError(f"AWS quota reached for {what} ({code}: {message}); ask for an increase in the Service "
                        "Quotas console") from None
    if code in _MISSING or status == 404:
        raise UserError(f"{what}: not found ({code or status}: {message})") from None
    # Batch's ClientException and CloudFormation's ValidationError are the caller's mistakes by definition
    # (a missing queue or job definition, a bad parameter); their message says which
    if code in ("ClientException", "ValidationError", "InvalidParameterValue", "InvalidParameterException",
                "ValidationException"):
        raise UserError(f"{what}: {message}") from None
