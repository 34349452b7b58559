"""``edgefleet agent check`` connects to the broker the config names and says what it found."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.edge_agent import AgentThread, agent_toml, make_config
from support.mqtt import Probe

from edgefleet.cli import main
from edgefleet.cloud.broker.base import free_port
from edgefleet.edge.transport.check import BrokerUnreachable
from edgefleet.edge.transport.mqtt import MqttTransport


def _config(tmp_path: Path, port: int, bundle: Path, pub: Path, device: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(agent_toml(tmp_path / "d", port, device=device, bundle=bundle, keys=[pub]))
    return path


@pytest.mark.slow(seconds=8)
def test_check_reports_a_live_broker_and_leaves_nothing_on_it(
    mosquitto, tmp_path, good_bundle, trusted_pub, capsys
):
    dev = "chk-1"
    # The device itself is running: the check must not take its session over (same client id).
    runner = AgentThread(
        make_config(
            agent_toml(
                tmp_path / "run", mosquitto.port, device=dev, bundle=good_bundle, keys=[trusted_pub]
            )
        )
    )
    probe = Probe(mosquitto.host, mosquitto.port)
    try:
        runner.wait_ready()
        transport = runner.agent.transport
        assert isinstance(transport, MqttTransport)
        probe.subscribe(f"edgefleet/v1/default/{dev}-check/#")
        probe.subscribe(f"edgefleet/v1/default/{dev}/status")
        time.sleep(0.3)
        seen = len(probe.messages)
        config = _config(tmp_path, mosquitto.port, good_bundle, trusted_pub, dev)
        assert main(["agent", "check", "--config", str(config), "--windows", "1"]) == 0
        out = capsys.readouterr().out
        line = next(s for s in out.splitlines() if s.startswith("broker:"))
        assert line.startswith(f"broker: connected to mqtt://127.0.0.1:{mosquitto.port} in "), line
        assert "(CONNACK Success)" in line, line
        assert "nothing published" in line, line
        assert "tiny-vib@1.0.0" in out  # the dry pass ran too
        time.sleep(0.5)
        # No status, retained or not, and the running agent kept its one session.
        assert probe.messages[seen:] == []
        assert transport.connects == 1
        assert transport.connected
    finally:
        probe.close()
        runner.stop()


def test_check_against_a_closed_port_fails_with_exit_7(tmp_path, good_bundle, trusted_pub, capsys):
    port = free_port()  # nothing listens there
    config = _config(tmp_path, port, good_bundle, trusted_pub, "chk-2")
    started = time.monotonic()
    code = main(["agent", "check", "--config", str(config), "--windows", "1"])
    assert code == BrokerUnreachable.exit_code == 7
    assert time.monotonic() - started < 15
    captured = capsys.readouterr()
    line = next(s for s in captured.out.splitlines() if s.startswith("broker:"))
    assert line == (
        f"broker: cannot connect to mqtt://127.0.0.1:{port}: connection refused (is the broker "
        "running, and is mqtt.port right?)"
    ), line
    assert "tiny-vib@1.0.0" in captured.out  # the dry pass still reports the model
    assert f"error: mqtt://127.0.0.1:{port}: connection refused" in captured.err
    # Offline use: --no-broker skips the connection and passes.
    assert main(["agent", "check", "--config", str(config), "--no-broker", "--windows", "1"]) == 0
    assert "broker:" not in capsys.readouterr().out
