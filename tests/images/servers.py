"""Real parts for the image tests, started as loopback processes: registry, dockerd, moto, and an
export HTTP server that speaks like KubeVirt's export proxy (token header, Range on raw, gzip)."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bcrypt_hash(password: str) -> str:
    """libxcrypt's bcrypt through the stdlib `crypt` module (Python 3.11), else apache2-utils."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    except (ImportError, AttributeError):
        out = subprocess.run(["htpasswd", "-nbB", "x", password], check=True, capture_output=True, text=True)
        return out.stdout.strip().split(":", 1)[1]


@dataclass
class Registry:
    host: str
    root: Path
    username: str | None = None
    password: str | None = None


@contextmanager
def run_registry(root: Path, *, username: str | None = None, password: str | None = None) -> Iterator[Registry]:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    auth = ""
    if username and password:
        (root / "htpasswd").write_text(f"{username}:{bcrypt_hash(password)}\n")
        auth = f"auth:\n  htpasswd:\n    realm: labrador-test\n    path: {root / 'htpasswd'}\n"
    (root / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth)
    log = (root / "registry.log").open("wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")], stdout=log, stderr=log)
    try:
        wait_port(port, proc)
        yield Registry(f"127.0.0.1:{port}", root, username, password)
    finally:
        stop(proc)
        log.close()


@contextmanager
def run_dockerd(root: Path) -> Iterator[str]:
    """A private daemon: vfs storage, no iptables, no bridge, its own dirs and socket."""
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    log = (root / "dockerd.log").open("wb")
    proc = subprocess.Popen([
        "dockerd", "--iptables=false", "--bridge=none", "--storage-driver=vfs",
        f"--data-root={root / 'data'}", f"--exec-root={root / 'exec'}", f"--pidfile={root / 'dockerd.pid'}",
        "-H", f"unix://{sock}",
    ], stdout=log, stderr=log)
    host = f"unix://{sock}"
    try:
        import docker

        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {proc.returncode}: see {root / 'dockerd.log'}")
            try:
                docker.APIClient(base_url=host).ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield host
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(root / "data", ignore_errors=True)


@contextmanager
def run_moto(root: Path) -> Iterator[str]:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = (root / "moto.log").open("wb")
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    try:
        wait_port(port, proc, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


def make_raw_disk(path: Path, size: int, random_bytes: int) -> Path:
    """A raw disk: `random_bytes` of incompressible data, then zeros (sparse), with a boot signature
    (0x55AA at offset 510) so that it passes the pipeline's input inspection like a real disk."""
    with path.open("wb") as handle:
        handle.write(os.urandom(random_bytes))
        handle.truncate(size)
        handle.seek(510)
        handle.write(b"\x55\xaa")
    return path


def make_qcow2_disk(path: Path, size: int = 8 << 20, random_bytes: int = 2 << 20) -> Path:
    raw = make_raw_disk(path.with_suffix(".raw"), size, random_bytes)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", str(raw), str(path)], check=True)
    raw.unlink()
    return path


@dataclass
class ExportServer:
    """Serves /raw (Range) and /gzip for one disk; `cut_at` drops the connection after N bytes once."""

    disk: Path
    token: str
    url: str = ""
    cut_at: int | None = None
    raw_enabled: bool = True
    sent: list[int] = field(default_factory=list)  # body bytes sent per request
    ranges: list[str | None] = field(default_factory=list)

    @property
    def raw_url(self) -> str:
        return self.url + "/volumes/disk/disk.img"

    @property
    def gzip_url(self) -> str:
        return self.url + "/volumes/disk/disk.img.gz"

    async def _raw(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("x-kubevirt-export-token") != self.token:
            return web.Response(status=401)
        if not self.raw_enabled:
            return web.Response(status=404)
        size = self.disk.stat().st_size
        start = 0
        header = request.headers.get("Range")
        self.ranges.append(header)
        response = web.StreamResponse(status=200)
        if header:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            response.set_status(206)
            response.headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        response.headers["Accept-Ranges"] = "bytes"
        response.content_length = size - start
        await response.prepare(request)
        sent = 0
        cut, self.cut_at = self.cut_at, None
        with self.disk.open("rb") as handle:
            handle.seek(start)
            while block := handle.read(256 << 10):
                if cut is not None and start + sent + len(block) > cut:
                    block = block[: cut - start - sent]
                    await response.write(block)
                    sent += len(block)
                    self.sent.append(sent)
                    assert request.transport is not None
                    await asyncio.sleep(0.05)
                    request.transport.close()  # cut mid-transfer, as a dropped connection would
                    return response
                await response.write(block)
                sent += len(block)
        self.sent.append(sent)
        await response.write_eof()
        return response

    async def _gzip(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("x-kubevirt-export-token") != self.token:
            return web.Response(status=401)
        body = gzip.compress(self.disk.read_bytes(), compresslevel=1)
        self.sent.append(len(body))
        return web.Response(body=body, content_type="application/gzip")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/volumes/disk/disk.img", self._raw)
        app.router.add_get("/volumes/disk/disk.img.gz", self._gzip)
        return app
