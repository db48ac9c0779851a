"""Benchmark: containerDisk build+push of a generated qcow2, both builders vs the docker CLI vs the floor.

    python -m bench.image_build [--size 2GiB] [--workdir DIR] [--json]

One run, one machine, the same registry and daemon for everyone (all started here, loopback only):
- floor: read + sha256 of the disk bytes (what any push must at least do);
- registry ingest: the same bytes PATCHed by curl into a fresh registry (what the registry needs to store them);
- daemonless: our streaming builder (one read, digest while streaming, no temporary copy);
- docker-sdk: our docker builder (FROM scratch + ADD --chown via the SDK, then the daemon's push);
- docker-cli: `docker build` + `docker push` (legacy builder, DOCKER_BUILDKIT=0);
- resume: an export download cut at 90%, resumed: bytes transferred beyond the disk size.
The disk is incompressible random data in a qcow2, as a real compressed golden image nearly is.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web

from image_pipeline.builders import make_builder
from image_pipeline.download import download_export
from image_pipeline.errors import PipelineError
from image_pipeline.reference import ImageRef
from tests.images.servers import ExportServer, run_dockerd, run_registry

UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    return int(float(text[:-1]) * UNITS[text[-1]]) if text[-1] in UNITS else int(text)


def make_disk(path: Path, size: int) -> Path:
    raw = path.with_suffix(".raw")
    with raw.open("wb") as handle:
        remaining = size
        while remaining:
            block = os.urandom(min(16 << 20, remaining))
            handle.write(block)
            remaining -= len(block)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()
    return path


def floor(path: Path) -> float:
    start = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 << 20):
            digest.update(block)
    return time.perf_counter() - start


async def ours(builder_name: str, disk: Path, registry: str, repo: str, docker_host: str | None) -> float:
    builder = make_builder(builder_name, None, docker_host=docker_host)  # type: ignore[arg-type]
    target = ImageRef(registry, repo, "bench-1.31.4-20261124")
    start = time.perf_counter()
    await builder.push(await builder.build(disk, target))
    return time.perf_counter() - start


def docker_cli(disk: Path, registry: str, docker_host: str, work: Path) -> tuple[float, float]:
    context = work / "context"
    context.mkdir()
    os.link(disk, context / "disk.img")  # a hard link: no copy before the daemon's own
    (context / "Dockerfile").write_text("FROM scratch\nADD --chown=107:107 disk.img /disk/\n")
    env = {**os.environ, "DOCKER_HOST": docker_host, "DOCKER_BUILDKIT": "0", "DOCKER_CONFIG": str(work / "dcfg")}
    tag = f"{registry}/bench/cli:bench-1.31.4-20261124"
    start = time.perf_counter()
    subprocess.run(["docker", "build", "-q", "-t", tag, str(context)], check=True, env=env, stdout=subprocess.DEVNULL)
    built = time.perf_counter()
    subprocess.run(["docker", "push", "-q", tag], check=True, env=env, stdout=subprocess.DEVNULL)
    pushed = time.perf_counter()
    shutil.rmtree(context)
    return built - start, pushed - built


async def registry_ingest(disk: Path, registry: str) -> float:
    """What the registry alone needs to take the bytes in: one PATCH by curl, no hashing on our side."""
    from image_pipeline.registry import RegistryClient

    async with RegistryClient(registry, "bench/ingest") as client:
        location = await client._start_upload()
    start = time.perf_counter()
    await asyncio.to_thread(subprocess.run, ["curl", "-sf", "-o", "/dev/null", "-X", "PATCH", "-H",
                                             "Content-Type: application/octet-stream", "-T", str(disk), location],
                            check=True)
    return time.perf_counter() - start


async def resume_extra(disk: Path, size: int, work: Path, chunk: int = 1 << 20) -> dict[str, int]:
    server = ExportServer(disk, token="bench", cut_at=int(size * 0.9))
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    dest = work / "export.img"
    try:
        try:
            await download_export(server.raw_url, None, dest, "bench", chunk_size=chunk)
        except PipelineError:
            pass
        result = await download_export(server.raw_url, None, dest, "bench", chunk_size=chunk)
    finally:
        await runner.cleanup()
        dest.unlink(missing_ok=True)
    missing = size - int(size * 0.9)
    return {"disk": size, "missing_after_cut": missing, "resumed_transfer": result.transferred,
            "extra_bytes": result.transferred - missing, "chunk": chunk}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2GiB", help="virtual size of the generated disk (e.g. 256MiB, 2GiB)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--registry-dir", type=Path, default=None,
                        help="where the registries store blobs (default: the workdir; /dev/shm takes the disk out)")
    parser.add_argument("--skip-docker", action="store_true", help="only floor, registry ingest, daemonless, resume")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="lbd-bench-", dir=args.workdir))
    figures: dict[str, Any] = {"size": size}
    try:
        disk = make_disk(work / "disk.qcow2", size)
        figures["qcow2_bytes"] = disk.stat().st_size
        floor(disk)  # warm the page cache so everyone reads from memory alike
        figures["floor_sha256_read"] = floor(disk)
        # Each contender gets its own registry (and daemon): no blob shared, no build cache reused.
        regs = Path(tempfile.mkdtemp(prefix="lbd-reg-", dir=args.registry_dir)) if args.registry_dir else work
        try:
            with run_registry(regs / "reg-ingest") as registry:
                figures["registry_ingest"] = await registry_ingest(disk, registry.host)
            shutil.rmtree(regs / "reg-ingest", ignore_errors=True)
            with run_registry(regs / "reg-daemonless") as registry:
                figures["daemonless"] = await ours("daemonless", disk, registry.host, "bench/daemonless", None)
            shutil.rmtree(regs / "reg-daemonless", ignore_errors=True)
            if not args.skip_docker:
                with run_registry(regs / "reg-sdk") as registry, run_dockerd(work / "d-sdk") as docker_host:
                    figures["docker_sdk"] = await ours("docker", disk, registry.host, "bench/sdk", docker_host)
                shutil.rmtree(regs / "reg-sdk", ignore_errors=True)
                with run_registry(regs / "reg-cli") as registry, run_dockerd(work / "d-cli") as docker_host:
                    build, push = docker_cli(disk, registry.host, docker_host, work)
                    figures["docker_cli_build"], figures["docker_cli_push"] = build, push
                    figures["docker_cli"] = build + push
        finally:
            if regs != work:
                shutil.rmtree(regs, ignore_errors=True)
        figures["resume"] = await resume_extra(disk, figures["qcow2_bytes"], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "docker_cli" in figures:
        figures["daemonless_speedup_vs_docker_cli"] = figures["docker_cli"] / figures["daemonless"]
    figures["daemonless_vs_floor"] = figures["daemonless"] / figures["floor_sha256_read"]
    figures["daemonless_vs_registry_ingest"] = figures["daemonless"] / figures["registry_ingest"]
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    gib = size / (1 << 30)
    print(f"disk: {gib:.2f} GiB virtual, {figures['qcow2_bytes'] / (1 << 30):.2f} GiB qcow2 (random data)")
    for key, label in (("floor_sha256_read", "floor (read + sha256)"),
                       ("registry_ingest", "registry ingest (curl)"), ("daemonless", "daemonless build+push"),
                       ("docker_sdk", "docker SDK build+push"), ("docker_cli_build", "docker CLI build"),
                       ("docker_cli_push", "docker CLI push"), ("docker_cli", "docker CLI build+push")):
        if key not in figures:
            continue
        seconds = figures[key]
        print(f"  {label:<24} {seconds:7.2f} s  {figures['qcow2_bytes'] / seconds / (1 << 20):8.0f} MiB/s")
    if "docker_cli" in figures:
        print(f"  daemonless is {figures['daemonless_speedup_vs_docker_cli']:.1f}x faster than the docker CLI")
    print(f"  daemonless is {figures['daemonless_vs_floor']:.2f}x the floor, "
          f"{figures['daemonless_vs_registry_ingest']:.2f}x the registry's own ingest time")
    r = figures["resume"]
    print(f"  resume after a cut at 90%: {r['resumed_transfer']} bytes sent for {r['missing_after_cut']} missing "
          f"(extra {r['extra_bytes']} bytes, chunk {r['chunk']})")


if __name__ == "__main__":
    asyncio.run(main())
