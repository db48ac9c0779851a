"""Registry credentials: a docker config.json (docker SDK's parser, credential helpers included) or
ECR through boto3's `get_authorization_token`. Credentials never leave the worker: workflow inputs
carry the registry name only.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cluster.secret_files import InsecureKeyFile, check_key_file
from image_pipeline.errors import PermanentError, PipelineError

ECR_HOST_RE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")

AuthMode = Literal["auto", "docker-config", "ecr", "none"]


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def docker_auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


def docker_config_credentials(registry: str, config_path: Path | None = None) -> Credentials | None:
    """Entry for `registry` in a docker config.json (`auths`, `credsStore`, `credHelpers`)."""
    import docker.auth
    import docker.errors

    if config_path is not None:  # the setting `docker_config`: registry passwords, a key file like the others
        try:
            check_key_file(config_path, "docker_config")
        except InsecureKeyFile as exc:
            raise PermanentError(str(exc)) from None
    try:
        config = docker.auth.load_config(config_path=str(config_path) if config_path else None)
        entry = config.resolve_authconfig(registry)
    except docker.errors.DockerException as exc:
        raise PermanentError(f"docker config: cannot read credentials for {registry}: {exc}") from exc
    if not entry:
        return None
    username = entry.get("username") or entry.get("Username")
    password = entry.get("password") or entry.get("Password")
    if not username or password is None:
        return None
    return Credentials(username, password)


def ecr_credentials(registry: str, *, region: str | None = None, endpoint_url: str | None = None) -> Credentials:
    """Exchange AWS credentials for a 12-hour ECR registry password."""
    import boto3
    import botocore.exceptions

    match = ECR_HOST_RE.fullmatch(registry)
    region = region or (match["region"] if match else None) or "us-east-1"
    client = boto3.client("ecr", region_name=region, endpoint_url=endpoint_url)
    try:
        kwargs = {"registryIds": [match["account"]]} if match else {}
        data = client.get_authorization_token(**kwargs)["authorizationData"][0]
    except botocore.exceptions.NoCredentialsError as exc:
        raise PermanentError("ECR: no AWS credentials available to the worker") from exc
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("AccessDeniedException", "UnrecognizedClientException"):
            raise PermanentError(f"ECR refused get_authorization_token: {code}") from exc
        raise PipelineError(f"ECR get_authorization_token failed: {code or exc}") from exc
    except botocore.exceptions.EndpointConnectionError as exc:
        raise PipelineError(f"ECR unreachable: {exc}") from exc
    username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    return Credentials(username, password)


def resolve_credentials(
    registry: str, mode: AuthMode = "auto", *, docker_config: Path | None = None,
    aws_endpoint_url: str | None = None,
) -> Credentials | None:
    if mode == "none":
        return None
    if mode == "ecr" or (mode == "auto" and ECR_HOST_RE.fullmatch(registry)):
        return ecr_credentials(registry, endpoint_url=aws_endpoint_url)
    return docker_config_credentials(registry, docker_config)
