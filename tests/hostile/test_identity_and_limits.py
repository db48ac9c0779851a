"""Identity and limits (#16 items 1-2): every name is validated whole (a trailing newline is not a
new student), student IDs are lower case, every setting and flag is checked before anything starts,
and every refusal is one line with the README's exit code."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cluster.naming import InvalidName, is_dns_label, validate_student_id
from labrador.cli.main import app
from labrador.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


# --- names: anchored at the end of the text, not before a final newline --------------------------

@pytest.mark.parametrize("student", ["carol\n", "carol\r\n", "carol\n\n", "\ncarol", "car ol", "carol\x00", "", "-x"])
def test_a_student_id_with_a_line_break_or_control_character_is_refused(student: str) -> None:
    with pytest.raises(InvalidName, match="student"):
        validate_student_id(student)
    with pytest.raises(InvalidName):
        validate_student_id(student, existing=True)


@pytest.mark.parametrize("student", ["ALICE", "Alice", "bob.Smith@example.org"])
def test_upper_case_is_refused_for_a_new_lab_and_the_message_says_the_lower_case_id(student: str) -> None:
    with pytest.raises(InvalidName, match=f"use {student.lower()!r}"):
        validate_student_id(student)
    # A lab started before the rule can still be reached (status, end) until it ends.
    assert validate_student_id(student, existing=True) == student


def test_every_name_validator_refuses_a_trailing_newline() -> None:
    from pydantic import TypeAdapter, ValidationError

    from image_pipeline.errors import PermanentError
    from image_pipeline.reference import ImageRef
    from labrador.codec import CodecError, parse_keys
    from labs.models import DnsLabel, PinnedImage, Quantity, parse_duration, quantity_bytes

    assert is_dns_label("web") and not is_dns_label("web\n")
    for type_, good in ((DnsLabel, "web"), (Quantity, "1Gi")):
        TypeAdapter(type_).validate_python(good)
        with pytest.raises(ValidationError):
            TypeAdapter(type_).validate_python(good + "\n")
    with pytest.raises(ValueError):
        quantity_bytes("1Gi\n")
    with pytest.raises(CodecError):
        parse_keys("k1\n:" + "A" * 44)
    with pytest.raises(PermanentError):
        ImageRef("127.0.0.1:5000", "labs/node", "v1\n")
    with pytest.raises(ValidationError):
        TypeAdapter(PinnedImage).validate_python("registry.example/labs/node:v1\n")
    assert parse_duration("1h")


# --- settings: every value checked, one line, exit 1 --------------------------------------------

@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("max_vms", "-1", "greater than or equal to 1"),
        ("max_vms", "0", "greater than or equal to 1"),
        ("max_vms", "1e12", "max_vms"),
        ("max_memory", "lots", "not a Kubernetes quantity"),
        ("max_memory", "1Mi", "less than one node"),
        ("max_lab_duration", "0s", "longer than zero"),
        ("max_lab_duration", "nan", "not a duration"),
        ("session_health_interval", "-5s", "not a duration"),
        ("session_unclaimed_timeout", "99999999h", "not a duration"),
        ("kube_clone_stall_timeout", "nan", "kube_clone_stall_timeout"),
        ("kube_clone_stall_timeout", "inf", "kube_clone_stall_timeout"),
        ("kube_clone_backoff", "-1", "greater than or equal to 0"),
        ("sim_boot_seconds", "nan", "sim_boot_seconds"),
        ("sim_ssh_idle_seconds", "0", "greater than 0"),
        ("temporal_address", "127.0.0.1:99999", "port 1-65535"),
        ("temporal_address", "nohost", "host:port"),
        ("kube_nodeport_range", "32767-30000", "low first"),
        ("kube_nodeport_range", "0-70000", "port range"),
        ("task_queue", "a queue", "not a name"),
        ("kube_namespace", "Labrador", "DNS-1123"),
        ("registry", "host:0", "port 1-65535"),
        ("image_repository", "UPPER/case", "repository"),
        ("external_host", "", "host name"),
        ("image_rebuild_schedule", "every sunday", "cron"),
        ("data_dir", "/tmp/x\x00y", "NUL"),
        ("task_queue", "labrador\n", "line break"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_setting_and_its_source(name: str, value: str, words: str) -> None:
    env = {f"LABRADOR_{name.upper()}": value, "HOME": "/nonexistent"}
    with pytest.raises(SettingsError) as caught:
        load_settings(environ=env, use_dev_stack=False)
    message = str(caught.value)
    assert "\n" not in message and f"setting {name}" in message and f"LABRADOR_{name.upper()}" in message
    assert words in message, message


def test_the_defaults_are_valid_and_a_secret_value_is_never_shown() -> None:
    Settings()
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"LABRADOR_CODEC_KEYS": "x" * 10 + "\x00", "HOME": "/nonexistent"},
                      use_dev_stack=False)
    assert "xxxxxxxxxx" not in str(caught.value)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONPATH": str(ROOT),
            "XDG_STATE_HOME": "/nonexistent/state"}
    return subprocess.run([sys.executable, "-m", "labrador", *args], cwd=ROOT, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"LABRADOR_MAX_MEMORY": "lots"}, "setting max_memory"),
        ({"LABRADOR_CODEC_KEYS": "k1:notbase64!"}, "codec_keys"),
        ({"LABRADOR_CODEC_KEYS_FILE": "/nonexistent/keys"}, "codec_keys_file"),
        ({"LABRADOR_CONFIG": "/bin/true"}, "not UTF-8"),
        ({"LABRADOR_CONFIG": "/nonexistent/config.yaml"}, "cannot read"),
    ],
)
def test_settings_errors_reach_the_user_as_one_line_with_exit_1(env: dict[str, str], words: str) -> None:
    commands = [["lab", "status", "--student", "alice"], ["pool", "status"]]
    if "CODEC" not in next(iter(env)):  # codec keys matter only to commands that talk to Temporal
        commands.append(["labs", "list"])
    for command in commands:
        result = run_cli(*command, env=env)
        assert result.returncode == 1, (command, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert words in result.stderr, result.stderr


@pytest.mark.parametrize("value", ["nan", "-5", "0", "inf", "1e99"])
def test_a_bad_timeout_flag_is_a_usage_error_and_nothing_is_started(value: str) -> None:
    # No Temporal at this address: a usage error must come first (2), not an unreachable one (3).
    result = CliRunner().invoke(app, ["lab", "start", "--student", "alice", "--lab", "sandbox", "--wait",
                                      "--timeout", value], env={"LABRADOR_TEMPORAL_ADDRESS": "127.0.0.1:1"})
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("flag", [["--port", "99999"], ["--port", "0"], ["--ui-port", "-1"],
                                  ["--sim-boot-seconds", "nan"]])
def test_dev_flags_out_of_range_are_usage_errors(flag: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["dev", "--data-dir", str(tmp_path), *flag])
    assert result.exit_code == 2, result.output


def test_dev_on_a_port_in_use_is_refused_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("dev", "--data-dir", str(tmp_path / "d"), "--port", str(port),
                         env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert result.returncode == 1, result.stderr
    assert f"127.0.0.1:{port} is already in use" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "d" / "temporal.sqlite").exists()


async def test_an_end_reason_is_bounded_before_anything_is_sent() -> None:
    from labrador.client import LabClient, LabError

    labs = LabClient(None, Settings())  # type: ignore[arg-type]  # nothing may be contacted
    for reason in ("x" * 201, "two\nlines"):
        with pytest.raises(LabError, match="reason: at most 200 characters on one line"):
            await labs.end("alice", reason)


@pytest.mark.parametrize("args", [["lab", "resume", "--student", "alice", "--timeout", "nan"],
                                  ["pool", "size", "cp-v1-32", "--max", "10000000"],
                                  ["webhooks", "dead", "--limit", "0"]])
def test_other_numeric_flags_are_bounded(args: list[str]) -> None:
    result = CliRunner().invoke(app, args, env={"LABRADOR_TEMPORAL_ADDRESS": "127.0.0.1:1"})
    assert result.exit_code == 2, result.output


def test_a_codec_server_port_in_use_is_a_refusal_not_an_outage() -> None:
    from labrador.codec import new_key_entry

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["codec-server", "--port", str(port)],
                                    env={"LABRADOR_CODEC_KEYS": new_key_entry("k1"), "HOME": "/nonexistent"})
    assert result.exit_code == 1 and "cannot listen" in result.output, result.output


def test_a_config_file_alias_bomb_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    text = "a0: &a0 [" + ", ".join(["x"] * 10) + "]\n"
    for i in range(1, 9):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 7) + "]\n"
    config.write_text(text)
    with pytest.raises(SettingsError, match=r"aliases|expands"):
        load_settings(config_file=config, environ={"HOME": "/nonexistent"}, use_dev_stack=False)


def test_a_bad_phase_is_refused_before_temporal_is_contacted() -> None:
    result = CliRunner().invoke(app, ["lab", "list", "--phase", "bogus"],
                                env={"LABRADOR_TEMPORAL_ADDRESS": "127.0.0.1:1"})
    assert result.exit_code == 2 and "--phase: 'bogus' is not one of" in result.output, result.output


def test_an_unknown_lab_is_refused_before_temporal_is_contacted() -> None:
    result = CliRunner().invoke(app, ["lab", "start", "--student", "alice", "--lab", "nope"],
                                env={"LABRADOR_TEMPORAL_ADDRESS": "127.0.0.1:1"})
    assert result.exit_code == 1 and "--lab: 'nope' is not in the catalog" in result.output, result.output


def test_every_timeout_flag_of_every_command_is_bounded() -> None:
    """The class, not the example: a new command with an unchecked --timeout fails here."""
    import typer.main

    def commands(group: Any, path: str) -> list[tuple[str, Any]]:
        found = [(path, group)]
        if hasattr(group, "commands"):  # a group (typer may carry its own click: no isinstance)
            for name, sub in group.commands.items():
                found += commands(sub, f"{path} {name}")
        return found

    checked = []
    for path, command in commands(typer.main.get_command(app), "labrador"):
        for param in command.params:
            if "--timeout" not in getattr(param, "opts", []):
                continue
            checked.append(path)
            for bad in ("nan", "-5", "inf"):
                result = CliRunner().invoke(app, [*path.split()[1:], "--timeout", bad])  # processed first
                assert result.exit_code == 2 and "Missing" not in result.output, (path, bad, result.output)
    assert "labrador lab reset" in checked and "labrador lab start" in checked, checked
