"""A small OCI distribution client (aiohttp): the calls a containerDisk push needs, nothing more.

Why by hand (see docs/images.md): oras-py wants each layer as a finished file that it hashes, then
re-reads to upload (a temporary tar copy of a multi-GiB disk, read twice); the docker SDK only talks
to a daemon. The distribution protocol needed here is five calls: POST an upload session, PATCH the
layer as one stream, PUT `?digest=` (the registry verifies the digest we computed while streaming),
HEAD to skip blobs already present, PUT the manifest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator
from urllib.parse import urlencode, urljoin

import aiohttp

from image_pipeline.auth import Credentials
from image_pipeline.errors import PermanentError, PipelineError
from image_pipeline.reference import is_loopback

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_ACCEPT = ", ".join([
    OCI_MANIFEST,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
_CHALLENGE_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryClient:
    def __init__(self, registry: str, repository: str, credentials: Credentials | None = None, *,
                 insecure: bool = False) -> None:
        self.registry = registry
        self.repository = repository
        self.credentials = credentials
        # Plain HTTP for loopback registries (as docker does) or when the operator says so.
        scheme = "http" if insecure or is_loopback(registry) else "https"
        self.base = f"{scheme}://{registry}"
        self._authorization: str | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RegistryClient:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600)
        self._session = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use RegistryClient as an async context manager"
        return self._session

    def _url(self, path: str) -> str:
        return urljoin(self.base, path)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self._authorization:
            headers["Authorization"] = self._authorization
        return headers

    async def _authenticate(self, challenge: str, scope: str) -> None:
        kind, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM_RE.findall(params_text))
        if kind.lower() == "basic":
            if self.credentials is None:
                raise PermanentError(f"registry {self.registry} requires credentials and none are configured")
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            self._authorization = "Basic " + base64.b64encode(raw).decode()
            return
        if kind.lower() != "bearer" or "realm" not in params:
            raise PermanentError(f"registry {self.registry}: unsupported auth challenge {kind!r}")
        query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
        auth = (aiohttp.BasicAuth(self.credentials.username, self.credentials.password)
                if self.credentials else None)
        async with self.session.get(params["realm"] + "?" + urlencode(query), auth=auth) as response:
            if response.status in (401, 403):
                raise PermanentError(f"registry {self.registry} refused the credentials (token HTTP {response.status})")
            if response.status >= 400:
                raise PipelineError(f"registry {self.registry} token endpoint answered HTTP {response.status}")
            body = await response.json(content_type=None)
        token = body.get("token") or body.get("access_token")
        if not token:
            raise PermanentError(f"registry {self.registry} token endpoint returned no token")
        self._authorization = f"Bearer {token}"

    async def _request(self, method: str, path: str, *, data: bytes | None = None,
                       headers: dict[str, str] | None = None, push: bool = True) -> tuple[int, dict[str, str], bytes]:
        """A small request with one authentication round (the body is bytes, so it can be re-sent)."""
        scope = f"repository:{self.repository}:{'pull,push' if push else 'pull'}"
        for attempt in range(2):
            try:
                async with self.session.request(method, self._url(path), data=data,
                                                headers=self._headers(headers)) as response:
                    body = await response.read()
                    if response.status == 401 and attempt == 0:
                        await self._authenticate(response.headers.get("WWW-Authenticate", ""), scope)
                        continue
                    return response.status, dict(response.headers), body
            except aiohttp.ClientConnectionError as exc:
                raise PipelineError(f"registry {self.registry} unreachable: {exc}") from exc
        raise PermanentError(f"registry {self.registry} refused the credentials for {self.repository}")

    @staticmethod
    def _raise_for(status: int, body: bytes, what: str) -> None:
        if status < 400:
            return
        text = body.decode(errors="replace")[:300]
        if status in (401, 403):
            raise PermanentError(f"registry refused {what} (HTTP {status}): {text}")
        if status in (400, 404, 405) or (status < 500 and status != 429):
            raise PermanentError(f"registry rejected {what} (HTTP {status}): {text}")
        raise PipelineError(f"registry failed {what} (HTTP {status}): {text}")

    async def blob_exists(self, digest: str) -> bool:
        status, _, _ = await self._request("HEAD", f"/v2/{self.repository}/blobs/{digest}")
        return status == 200

    async def _start_upload(self) -> str:
        status, headers, body = await self._request("POST", f"/v2/{self.repository}/blobs/uploads/")
        self._raise_for(status, body, "starting a blob upload")
        return self._url(headers["Location"])

    @staticmethod
    def _with_digest(location: str, digest: str) -> str:
        return location + ("&" if "?" in location else "?") + urlencode({"digest": digest})

    async def upload_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if await self.blob_exists(digest):
            return digest
        location = await self._start_upload()
        async with self.session.put(self._with_digest(location, digest), data=data, headers=self._headers(
                {"Content-Type": "application/octet-stream"})) as response:
            self._raise_for(response.status, await response.read(), f"blob {digest}")
        return digest

    async def upload_stream(self, chunks: AsyncIterator[bytes], size: int, hasher: hashlib._Hash) -> str:
        """Stream one blob in a single PATCH; `hasher` is fed by the producer while it streams.

        The digest is only known once the last byte left, so the PUT that closes the session names it
        and the registry checks it against what it received.
        """
        location = await self._start_upload()
        headers = self._headers({"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        try:
            async with self.session.patch(location, data=chunks, headers=headers) as response:
                body = await response.read()
                self._raise_for(response.status, body, "the layer upload")
                location = self._url(response.headers.get("Location", location))
        except aiohttp.ClientConnectionError as exc:
            raise PipelineError(f"layer upload to {self.registry} cut: {exc}") from exc
        digest = "sha256:" + hasher.hexdigest()
        async with self.session.put(self._with_digest(location, digest), headers=self._headers()) as response:
            self._raise_for(response.status, await response.read(), f"closing the layer upload {digest}")
        return digest

    async def put_manifest(self, reference: str, manifest: bytes, media_type: str = OCI_MANIFEST) -> str:
        status, headers, body = await self._request(
            "PUT", f"/v2/{self.repository}/manifests/{reference}", data=manifest,
            headers={"Content-Type": media_type})
        self._raise_for(status, body, f"manifest {reference}")
        digest = sha256_digest(manifest)
        returned = headers.get("Docker-Content-Digest")
        if returned and returned != digest:
            raise PermanentError(f"registry stored manifest {returned}, expected {digest}")
        return digest

    async def get_manifest(self, reference: str) -> tuple[str, dict[str, object]]:
        status, headers, body = await self._request(
            "GET", f"/v2/{self.repository}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}, push=False)
        self._raise_for(status, body, f"manifest {reference}")
        return headers.get("Docker-Content-Digest") or sha256_digest(body), json.loads(body)

    async def get_blob(self, digest: str) -> bytes:
        status, _, body = await self._request("GET", f"/v2/{self.repository}/blobs/{digest}", push=False)
        self._raise_for(status, body, f"blob {digest}")
        return body
