"""Config parsing: env substitution, errors that name the key and the fix, the CLI around it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.cli import main
from edgefleet.edge.config import SAMPLE, apply_runtime_change, load_config, parse_config
from edgefleet.protocol.errors import ConfigError

BASE = '[device]\nid = "pi-1"\n'


def test_sample_parses_and_env_substitutes():
    cfg = parse_config(SAMPLE, env={"EDGEFLEET_DEVICE_ID": "pi-0042"})
    assert cfg.device.id == "pi-0042"
    cfg = parse_config(
        BASE + '[mqtt]\nusername = "${U}"\npassword = "${P:-none}"\n', env={"U": "alice"}
    )
    assert (cfg.mqtt.username, cfg.mqtt.password) == ("alice", "none")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[device]\n", "device.id is required"),
        (BASE + "[mqtt]\nport = 70000\n", "mqtt.port"),
        (BASE + "[mqtt]\nprot = 1\n", "unknown key [mqtt] prot"),
        (BASE + '[source]\nkind = "usb"\n', "choose simulated, serial or replay"),
        (BASE + '[mqtt]\nhost = "${MISSING_VAR}"\n', "${MISSING_VAR} is not set"),
        ('[device]\nid = "a/b"\n', "device.id"),
        (BASE + '[mqtt]\ncert_file = "/x.pem"\n', "go together"),
        (BASE + '[source]\nkind = "replay"\n', "source.path is required"),
        (BASE + '[model]\ntrusted_keys = ["/nonexistent.pub"]\n', "model.trusted_keys"),
        ("[device\n", "not valid TOML"),
        (BASE + '[source]\nkind = "serial"\n', "source.channels is required"),
        (BASE + '[source]\nkind = "serial"\nchannels = ["a"]\nmode = "usb"\n', "source.mode"),
        (
            BASE + '[source]\nkind = "serial"\nchannels = ["a"]\ncolumns = ["t", "a"]\n',
            'mode = "line" only',
        ),
        (
            BASE + '[source]\nkind = "serial"\nmode = "line"\nchannels = ["a", "b"]\n'
            'columns = ["t", "a"]\n',
            "not among the CSV columns",
        ),
        (
            BASE + '[source]\nkind = "serial"\nmode = "line"\nchannels = ["a"]\n'
            'columns = ["a"]\ntime_key = "t"\n',
            "time_key",
        ),
        (
            BASE + '[source]\nkind = "serial"\nchannels = ["a"]\nreconnect_max_s = 0.01\n',
            "source.reconnect_max_s",
        ),
    ],
)
def test_bad_configs_name_the_key(text, needle):
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    assert needle in str(info.value)
    assert info.value.exit_code == 4


def test_serial_line_mode_config_parses():
    cfg = parse_config(
        BASE + '[source]\nkind = "serial"\nport = "/dev/ttyUSB0"\nmode = "line"\n'
        'format = "csv"\nchannels = ["ax", "ay"]\ncolumns = ["t_ms", "ax", "ay"]\n'
        'time_key = "t_ms"\ntime_scale = 0.001\n',
        env={},
    )
    src = cfg.source
    assert (src.kind, src.mode, src.columns, src.time_key) == (
        "serial",
        "line",
        ["t_ms", "ax", "ay"],
        "t_ms",
    )
    assert parse_config(BASE + '[source]\nkind = "serial"\nchannels = ["a"]\n', env={})


def test_runtime_change_whitelist():
    cfg = parse_config(BASE, env={})
    new = apply_runtime_change(cfg, {"uplink.batch_max": 7})
    assert new.uplink.batch_max == 7
    assert cfg.uplink.batch_max == 100
    with pytest.raises(ConfigError) as info:
        apply_runtime_change(cfg, {"device.id": "x"})
    assert info.value.reason == "unknown-key"
    with pytest.raises(ConfigError) as info:
        apply_runtime_change(cfg, {"uplink.batch_max": 0})
    assert info.value.reason == "bad-value"


def test_cli_bad_config_is_one_clear_error(tmp_path: Path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE + "[uplink]\nbatch_max = 0\n")
    assert main(["agent", "check", "--config", str(bad)]) == 4
    err = capsys.readouterr().err
    assert "uplink.batch_max" in err
    assert main(["agent", "status", "--config", str(tmp_path / "missing.toml")]) == 4


def test_cli_config_sample_round_trips(tmp_path: Path, capsys):
    assert main(["agent", "config-sample"]) == 0
    path = tmp_path / "agent.toml"
    path.write_text(capsys.readouterr().out)
    assert load_config(path, env={}).device.id == "pi-0001"


def test_cli_check_and_status(tmp_path: Path, capsys, good_bundle: Path, trusted_pub: Path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[device]\nid = "pi-9"\ndata_dir = "{tmp_path / "d"}"\n'
        f'[model]\nbundle = "{good_bundle}"\ntrusted_keys = ["{trusted_pub}"]\n'
    )
    # --no-broker: this config names no broker the test runs (agent check tries it by default).
    assert main(["agent", "check", "--config", str(cfg), "--windows", "2", "--no-broker"]) == 0
    out = capsys.readouterr().out
    assert "tiny-vib@1.0.0" in out
    assert "edgefleet/v1/default/pi-9/telemetry/inference" in out
    assert '"schema":"inference/1"' in out.replace(" ", "")
    assert not (tmp_path / "d" / "outbox.sqlite").exists()  # check stores nothing
    assert main(["agent", "status", "--config", str(cfg)]) == 0
    assert "not created yet" in capsys.readouterr().out
