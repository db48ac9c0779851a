"""Key files are refused when other users may read them (group-readable is how a mounted Secret
reaches a non-root worker through fsGroup, so it is allowed): codec keys, the platform SSH key,
the Temporal TLS key; one line naming the setting, the file and its mode."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import asyncssh
import pytest

from cluster.kubevirt.backend import public_key_from_private
from cluster.secret_files import InsecureKeyFile, check_key_file, read_key_text
from cluster.ssh import SshError, load_platform_key
from labrador.codec import CodecError, codec_from_settings, new_key_entry
from labrador.settings import Settings
from labrador.temporal import tls_config


def _file(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440, 0o660])
def test_owner_and_group_readable_files_are_accepted(tmp_path: Path, mode: int) -> None:
    path = _file(tmp_path / "keys", b"k", mode)
    assert check_key_file(path, "codec_keys_file") == path
    assert read_key_text(path, "codec_keys_file") == "k"


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o666, 0o601])
def test_files_others_may_touch_are_refused_in_one_line(tmp_path: Path, mode: int) -> None:
    path = _file(tmp_path / "keys", b"k", mode)
    with pytest.raises(InsecureKeyFile) as caught:
        check_key_file(path, "codec_keys_file")
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"setting codec_keys_file: {path} has mode {mode:04o}")


def test_mounted_secret_symlinks_are_judged_by_their_target(tmp_path: Path) -> None:
    # kubelet: keys -> ..data/keys, ..data -> ..2026_01_01/ (the file itself carries defaultMode)
    data = tmp_path / "..2026_01_01"
    data.mkdir()
    target = _file(data / "keys", b"k", 0o644)
    (tmp_path / "..data").symlink_to(data.name)
    (tmp_path / "keys").symlink_to("..data/keys")
    with pytest.raises(InsecureKeyFile, match="0644"):
        check_key_file(tmp_path / "keys", "codec_keys_file")
    target.chmod(0o440)
    assert read_key_text(tmp_path / "keys", "codec_keys_file") == "k"


def test_world_readable_codec_keys_are_refused(tmp_path: Path) -> None:
    path = _file(tmp_path / "codec.keys", (new_key_entry("k1") + "\n").encode(), 0o644)
    with pytest.raises(CodecError, match=r"setting codec_keys_file: .*codec.keys has mode 0644"):
        codec_from_settings(Settings(codec_keys_file=path))
    path.chmod(0o640)
    assert codec_from_settings(Settings(codec_keys_file=path)) is not None


def test_world_readable_platform_ssh_key_is_refused(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519").export_private_key("openssh")
    path = _file(tmp_path / "id_ed25519", key, 0o644)
    settings = Settings(ssh_private_key=path, cluster_backend="kubevirt")
    with pytest.raises(SshError, match=r"setting ssh_private_key: .*id_ed25519 has mode 0644"):
        load_platform_key(settings)
    with pytest.raises(InsecureKeyFile, match="ssh_private_key"):
        public_key_from_private(path)
    path.chmod(0o440)
    assert load_platform_key(settings).export_public_key("openssh").decode().startswith("ssh-ed25519 ")
    assert public_key_from_private(path).startswith("ssh-ed25519 ")


def test_world_readable_temporal_tls_key_is_refused(tmp_path: Path) -> None:
    key = _file(tmp_path / "tls.key", b"-----BEGIN PRIVATE KEY-----\n", 0o644)
    settings = Settings(temporal_tls=True, temporal_tls_key=key)
    with pytest.raises(InsecureKeyFile, match="setting temporal_tls_key"):
        tls_config(settings)
    key.chmod(0o600)
    assert tls_config(settings)


def test_dev_generated_keys_are_private(tmp_path: Path) -> None:
    from cluster.ssh import platform_key_path
    from labrador.codec import ensure_dev_codec_keys

    old = os.umask(0o022)
    try:
        settings = ensure_dev_codec_keys(Settings(data_dir=tmp_path))
        assert settings.codec_keys_file is not None
        check_key_file(settings.codec_keys_file, "codec_keys_file")
        check_key_file(platform_key_path(Settings(data_dir=tmp_path)), "ssh_private_key")
    finally:
        os.umask(old)


def test_dev_generated_api_keys_are_private_and_kept(tmp_path: Path) -> None:
    from labrador.api.keys import DEV_KEYS_FILE, ensure_dev_api_keys

    # A leftover world-readable temporary file from an older run must not lend its mode to the keys.
    stale = tmp_path / f".{DEV_KEYS_FILE}.tmp"
    stale.write_text("")
    stale.chmod(0o644)
    old = os.umask(0o022)
    try:
        first = ensure_dev_api_keys(Settings(data_dir=tmp_path))
        assert first.api_keys_file is not None
        check_key_file(first.api_keys_file, "api_keys_file")
        assert stat.S_IMODE(first.api_keys_file.stat().st_mode) == 0o600
        text = first.api_keys_file.read_text()
        again = ensure_dev_api_keys(Settings(data_dir=tmp_path))
        assert again.api_keys_file == first.api_keys_file
        assert first.api_keys_file.read_text() == text  # a second start keeps the first keys
    finally:
        os.umask(old)


def test_the_worker_mounts_its_secrets_without_access_for_others() -> None:
    import yaml

    deploy = Path(__file__).resolve().parents[1] / "deploy" / "worker" / "worker.yaml"
    (deployment,) = [d for d in yaml.safe_load_all(deploy.read_text()) if d and d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    secrets = [v["secret"] for v in pod["volumes"] if "secret" in v]
    assert secrets
    for secret in secrets:
        # the kubelet's default is 0644, which check_key_file refuses
        assert "defaultMode" in secret and secret["defaultMode"] & 0o007 == 0, secret["secretName"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_cli_names_a_world_readable_codec_key_file_and_exits_1(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from labrador.cli.main import app

    path = _file(tmp_path / "codec.keys", (new_key_entry("k1") + "\n").encode(), 0o644)
    env = {"LABRADOR_CODEC_KEYS_FILE": str(path), "LABRADOR_TEMPORAL_ADDRESS": "127.0.0.1:1",
           "XDG_STATE_HOME": str(tmp_path), "HOME": str(tmp_path)}
    result = CliRunner().invoke(app, ["lab", "status", "--student", "alice"], env=env)
    assert result.exit_code == 1, result.output
    assert f"setting codec_keys_file: {path} has mode 0644" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_world_readable_api_keys_file_is_refused(tmp_path: Path) -> None:
    from labrador.api.keys import KeyConfigError, keys_from_settings

    path = _file(tmp_path / "api.keys", b"admin:" + b"k" * 40 + b"\n", 0o644)
    with pytest.raises(KeyConfigError, match=r"setting api_keys_file: .*api.keys has mode 0644"):
        keys_from_settings(Settings(api_keys_file=path))
    path.chmod(0o440)
    assert len(keys_from_settings(Settings(api_keys_file=path))) == 1


def test_every_pod_in_deploy_meets_the_restricted_profile_its_namespace_enforces() -> None:
    import yaml

    deploy = Path(__file__).resolve().parents[1] / "deploy"
    (namespace,) = [d for d in yaml.safe_load_all((deploy / "namespace.yaml").read_text()) if d]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    workloads = [d for f in deploy.rglob("*.yaml") for d in yaml.safe_load_all(f.read_text())
                 if d and d.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}]
    assert workloads
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"] if "template" in workload.get("spec", {}) else workload["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] in {"RuntimeDefault", "Localhost"}
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
        assert all(set(v) & {"secret", "emptyDir", "configMap", "projected", "downwardAPI"} for v in pod["volumes"])


def test_the_simulated_clusters_store_of_host_keys_is_private(tmp_path: Path) -> None:
    from cluster.simulated.store import Store

    old = os.umask(0o022)
    try:
        fresh = Store(tmp_path / "new.sqlite")  # holds the simulated nodes' SSH host private keys
        fresh.close()
        assert (tmp_path / "new.sqlite").stat().st_mode & 0o077 == 0
        _file(tmp_path / "old.sqlite", b"", 0o644)  # made by an earlier version
        Store(tmp_path / "old.sqlite").close()
        assert (tmp_path / "old.sqlite").stat().st_mode & 0o077 == 0
    finally:
        os.umask(old)


def test_the_clis_copy_of_a_student_key_is_private_even_over_an_old_file(tmp_path: Path) -> None:
    from labrador.cli.lab_cmd import _key_file

    settings = Settings(data_dir=tmp_path)
    (tmp_path / "keys").mkdir()
    _file(tmp_path / "keys" / "s-alice-1a2b3c.key", b"stale", 0o644)
    path = _key_file(settings, "s-alice-1a2b3c", "-----BEGIN OPENSSH PRIVATE KEY-----")
    assert path.stat().st_mode & 0o077 == 0
    assert path.read_text() == "-----BEGIN OPENSSH PRIVATE KEY-----\n"


def test_a_world_readable_docker_config_is_refused(tmp_path: Path) -> None:
    import base64
    import json

    from image_pipeline.auth import docker_config_credentials
    from image_pipeline.errors import PermanentError

    auth = base64.b64encode(b"robot:s3cret").decode()
    path = _file(tmp_path / "config.json", json.dumps({"auths": {"registry.example.test": {"auth": auth}}}).encode(),
                 0o644)
    with pytest.raises(PermanentError, match=r"setting docker_config: .*config.json has mode 0644"):
        docker_config_credentials("registry.example.test", path)
    path.chmod(0o640)
    found = docker_config_credentials("registry.example.test", path)
    assert found is not None and found.password == "s3cret"


@pytest.mark.timeout(60)
def test_labrador_dev_refuses_a_world_readable_codec_key_file_at_once(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from tests.session.test_dev_stack import free_port

    path = _file(tmp_path / "codec.keys", (new_key_entry("k1") + "\n").encode(), 0o644)
    env = {name: value for name, value in os.environ.items() if not name.startswith("LABRADOR_")}
    env.update({"LABRADOR_CODEC_KEYS_FILE": str(path), "XDG_STATE_HOME": str(tmp_path / "state"),
                "HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    flags = ("--port", "--ui-port", "--api-port", "--metrics-port")
    ports = [arg for flag in flags for arg in (flag, str(free_port()))]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "labrador", "dev", "--data-dir", str(tmp_path / "data"), *ports],
                          env=env, capture_output=True, text=True, timeout=50)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: setting codec_keys_file: {path} has mode 0644"), done.stderr
    assert "not reachable" not in done.stderr and time.monotonic() - started < 20
    assert not (tmp_path / "data" / "temporal.log").exists()  # no Temporal server was spawned
