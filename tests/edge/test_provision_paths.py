"""Where a provisioned config puts the agent's state: writable by the installed service."""

from __future__ import annotations

from pathlib import Path

from edgefleet.edge.provision import _config_text, default_data_dir, target_root

ANSWER = {"broker_url": "mqtt://127.0.0.1:1883", "device_id": "pump-1", "fleet": "plant"}
FILES = {"command_keys": [], "trusted_keys": [], "record_key": False}


def test_the_system_config_dir_keeps_state_in_the_services_state_directory() -> None:
    # `agent install` runs with ProtectSystem=strict: /etc/edgefleet/data would be read-only.
    assert default_data_dir(Path("/etc/edgefleet")) == "/var/lib/edgefleet"
    text = _config_text(
        ANSWER, FILES, "http://cloud", None, default_data_dir(Path("/etc/edgefleet"))
    )
    assert 'data_dir = "/var/lib/edgefleet"' in text


def test_any_other_config_dir_keeps_state_beside_the_config(tmp_path: Path) -> None:
    assert default_data_dir(tmp_path) == "data"
    assert 'data_dir = "data"' in _config_text(ANSWER, FILES, "http://cloud", None)


def test_a_staging_root_keeps_the_services_view_in_the_config(tmp_path: Path) -> None:
    # `agent deploy --install-root R`: config in R/etc/edgefleet, paths as the device sees them.
    etc = tmp_path / "img" / "etc" / "edgefleet"
    assert target_root(etc) == tmp_path / "img"
    assert default_data_dir(etc) == "/var/lib/edgefleet"
    assert target_root(tmp_path / "conf") == Path("/")
