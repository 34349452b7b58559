"""Relative paths in an agent's config file are from the file's directory, not the caller's.

A device's config ships beside its keys; the agent is started by systemd, a script or a person
from whatever directory they are in, and hands paths to a SuperNode that runs elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.edge_agent import agent_toml
from support.mqtt import Probe

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.edge.config import load_config, parse_config
from edgefleet.protocol import topics
from edgefleet.protocol.signing import generate_keypair


def test_load_config_resolves_paths_against_the_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = (tmp_path / "site").resolve()
    (site / "keys").mkdir(parents=True)
    _, pub = generate_keypair(site / "keys")
    text = agent_toml(Path("data"), 1883, keys=[Path("keys") / pub.name])
    text += '\n[outbox]\npath = "box/outbox.sqlite"\n'
    text += '\n[fl]\nroot_certificates = "tls/ca.pem"\nsupernode_bin = "bin/flower-supernode"\n'
    (site / "agent.toml").write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("../site/agent.toml"), env={})
    assert cfg.data_dir == site / "data"
    assert cfg.outbox_path == site / "box" / "outbox.sqlite"
    assert cfg.model.trusted_keys == [str(pub)]
    assert cfg.fl.root_certificates == str(site / "tls" / "ca.pem")
    assert cfg.fl.supernode_bin == str(site / "bin" / "flower-supernode")
    # Text without a file: relative to the current directory; a bare command stays a name.
    bare = parse_config(agent_toml(Path("d"), 1883), env={})
    assert bare.data_dir == elsewhere.resolve() / "d"
    assert bare.fl.supernode_bin == "flower-supernode"
    assert bare.outbox_path == elsewhere.resolve() / "d" / "outbox.sqlite"


@pytest.mark.slow(seconds=15)
def test_agent_run_with_relative_config_from_another_directory(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    site = tmp_path / "site"
    (site / "keys").mkdir(parents=True)
    _, pub = generate_keypair(site / "keys")
    device = f"rel-{os.getpid()}"
    text = agent_toml(Path("data"), mosquitto.port, device=device, keys=[Path("keys") / pub.name])
    (site / "agent.toml").write_text(text + '\n[outbox]\npath = "box/outbox.sqlite"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = Probe(mosquitto.host, mosquitto.port)
    probe.subscribe(topics.telemetry("default", device, "health").rsplit("/", 1)[0] + "/#")
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgefleet.cli",
                "agent",
                "run",
                "--config",
                "../site/agent.toml",
            ],
            cwd=elsewhere,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        arrived = probe.wait_for(lambda ms: len(ms) > 0, 30)
        assert arrived, f"no telemetry from the agent; its log:\n{log.read_text()[-3000:]}"
        assert (site / "box" / "outbox.sqlite").is_file()
        assert (site / "data").is_dir()
        assert not (elsewhere / "data").exists()
    finally:
        probe.close()
        proc.terminate()
        rc = proc.wait(30)
    assert rc == 0, log.read_text()[-3000:]
