"""Settings: precedence flag > environment > config file > running dev stack > defaults; one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from labrador.settings import Settings, SettingsError, load_settings


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def base_env(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "XDG_STATE_HOME": str(home / "state")}


def write_dev_state(home: Path, settings: dict[str, object], pid: int | None = None) -> None:
    state = home / "state" / "labrador" / "dev.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"pid": os.getpid() if pid is None else pid, "settings": settings}))


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults(home: Path) -> None:
    settings = load_settings(environ=base_env(home))
    assert settings == Settings()
    assert settings.temporal_address == "127.0.0.1:7233" and settings.cluster_backend == "simulated"


def test_each_source_overrides_the_ones_below(home: Path) -> None:
    env = base_env(home)
    write_dev_state(
        home,
        {
            "temporal_address": "127.0.0.1:1001",
            "task_queue": "dev",
            "registry": "127.0.0.1:6001",
            "temporal_namespace": "dev-ns",
        },
    )
    config = write_config(
        home / ".config/labrador/config.yaml",
        "temporal-address: 127.0.0.1:1002\ntask_queue: from-file\nregistry: 127.0.0.1:6002\n",
    )
    env |= {"LABRADOR_TEMPORAL_ADDRESS": "127.0.0.1:1003", "LABRADOR_TASK_QUEUE": "from-env"}
    settings = load_settings({"temporal_address": "127.0.0.1:1004", "task_queue": None}, environ=env)
    assert settings.temporal_address == "127.0.0.1:1004"  # flag
    assert settings.task_queue == "from-env"  # env (the flag was not given)
    assert settings.registry == "127.0.0.1:6002"  # config file (the default location)
    assert settings.temporal_namespace == "dev-ns"  # running dev stack
    assert settings.max_vms == 200  # default
    assert config.is_file()


def test_dev_stack_counts_only_while_its_process_lives(home: Path) -> None:
    write_dev_state(home, {"temporal_address": "127.0.0.1:1001", "not_a_setting_any_more": 1}, pid=os.getpid())
    assert load_settings(environ=base_env(home)).temporal_address == "127.0.0.1:1001"
    assert load_settings(environ=base_env(home), use_dev_stack=False).temporal_address == "127.0.0.1:7233"
    write_dev_state(home, {"temporal_address": "127.0.0.1:1001"}, pid=2**22 + 7)  # no such process
    assert load_settings(environ=base_env(home)).temporal_address == "127.0.0.1:7233"


def test_config_file_from_flag_or_env_and_relative_paths(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(home))
    config = write_config(tmp_path / "etc/labrador.yaml", "catalog_dir: labs\nssh_private_key: ~/.ssh/platform\n")
    by_env = load_settings(environ=base_env(home) | {"LABRADOR_CONFIG": str(config)})
    by_flag = load_settings(config_file=config, environ=base_env(home))
    assert by_env == by_flag
    assert by_flag.catalog_dir == tmp_path / "etc/labs"  # relative to the file, not to the current directory
    assert by_flag.ssh_private_key == home / ".ssh/platform"
    with pytest.raises(SettingsError, match=r"^config file .*missing\.yaml: "):
        load_settings(config_file=tmp_path / "missing.yaml", environ=base_env(home))


def test_values_from_the_environment_are_parsed(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(home))
    env = {"LABRADOR_TEMPORAL_TLS": "true", "LABRADOR_MAX_VMS": "12", "LABRADOR_DATA_DIR": "~/lab-data"}
    settings = load_settings(environ=base_env(home) | env)
    assert settings.temporal_tls is True and settings.max_vms == 12
    assert settings.data_dir == home / "lab-data"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            {"env": {"LABRADOR_CLUSTER_BACKEND": "kubevrit"}},
            "setting cluster_backend (from LABRADOR_CLUSTER_BACKEND): Input should be 'simulated' or 'kubevirt' "
            "(got 'kubevrit')",
        ),
        (
            {"flags": {"max_vms": "many"}},
            "setting max_vms (from --max-vms): Input should be a valid integer, unable to parse string as an integer "
            "(got 'many')",
        ),
        (
            {"config": "max_lab_duration: soon\n"},
            "setting max_lab_duration (from config file {config}): "
            "'soon' is not a duration like '1h', '90m' or '1h30m'",
        ),
        (
            {"config": "temporal_adress: 127.0.0.1:7233\n"},
            "unknown setting 'temporal_adress' (from config file {config}); did you mean 'temporal_address'?",
        ),
        ({"config": "- a list\n"}, "config file {config}: expected a mapping of settings"),
    ],
)
def test_one_line_error_names_the_setting_and_its_source(
    home: Path, tmp_path: Path, source: dict[str, object], expected: str
) -> None:
    env = base_env(home) | dict(source.get("env", {}))  # type: ignore[call-overload]
    config = None
    if "config" in source:
        config = write_config(tmp_path / "config.yaml", str(source["config"]))
    with pytest.raises(SettingsError) as caught:
        load_settings(source.get("flags"), config_file=config, environ=env)  # type: ignore[arg-type]
    assert str(caught.value) == expected.format(config=config)
    assert "\n" not in str(caught.value)


def test_errors_never_echo_a_credential(home: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", "temporal_api_kye: sk-very-secret\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(config_file=config, environ=base_env(home))
    assert "sk-very-secret" not in str(caught.value) and "temporal_api_key" in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        load_settings({"codec_keys": ["k1:c2VjcmV0"]}, environ=base_env(home))
    assert "c2VjcmV0" not in str(caught.value) and "setting codec_keys (from --codec-keys)" in str(caught.value)
