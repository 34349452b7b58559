"""``edgefleet fl start --tls-dir --node-key``: a standalone run over TLS with SuperNode auth."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.fl_fleet import fill_agent_db, vibration_windows
from typer.testing import CliRunner

from edgefleet.cloud.fl.cli import app
from edgefleet.cloud.fl.errors import FlSettingsError
from edgefleet.cloud.fl.superlink.certs import CertsError, NodeKeyError, init_certs, node_key
from edgefleet.cloud.fl.superlink.process import free_port
from edgefleet.edge.fl.config import FlConfig, supernode_command
from edgefleet.edge.fl.supervisor import SuperNodeSupervisor

MODEL = "vibration-anomaly"


def _start(tmp_path: Path, *args: str) -> BaseException | None:
    result = CliRunner().invoke(
        app, ["start", "--model", MODEL, "--workdir", str(tmp_path / "w"), *args]
    )
    return result.exception


def test_bad_security_options_fail_before_anything_starts(tmp_path):
    certs = init_certs(tmp_path / "certs")
    good = node_key(tmp_path / "keys", "n1")
    err = _start(tmp_path, "--node-key", str(good.public_key))
    assert isinstance(err, FlSettingsError)
    assert "needs --tls-dir" in str(err)
    (tmp_path / "empty").mkdir()
    err = _start(tmp_path, "--tls-dir", str(tmp_path / "empty"))
    assert isinstance(err, CertsError)
    assert "fl certs init" in str(err)
    # A server certificate from one set beside the CA of another: caught, not served.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    other = init_certs(tmp_path / "other")
    for src in (certs.ca, certs.ca_key):
        (mixed / src.name).write_bytes(src.read_bytes())
    for src in (other.cert, other.key):
        (mixed / src.name).write_bytes(src.read_bytes())
    err = _start(tmp_path, "--tls-dir", str(mixed))
    assert isinstance(err, CertsError)
    assert "was not issued by" in str(err)
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    err = _start(tmp_path, "--tls-dir", str(certs.ca.parent), "--node-key", str(garbage))
    assert isinstance(err, NodeKeyError)
    err = _start(tmp_path, "--tls-dir", str(certs.ca.parent), "--cloud", "http://127.0.0.1:1")
    assert isinstance(err, FlSettingsError)
    assert "--cloud" in str(err)
    assert not (tmp_path / "w" / "run").exists()  # nothing was prepared


@pytest.mark.slow(seconds=45)
def test_standalone_run_over_tls_lets_in_only_the_registered_supernode(tmp_path):
    certs = init_certs(tmp_path / "certs")
    good = node_key(tmp_path / "keys", "good")
    port = free_port()
    db = fill_agent_db(tmp_path / "agent.db", MODEL, vibration_windows(7, 64))
    cmd = [
        str(Path(sys.executable).parent / "edgefleet"),
        "fl", "start", "--model", MODEL, "--rounds", "1", "--min-clients", "1",
        "--port", str(port), "--workdir", str(tmp_path / "w"),
        "--tls-dir", str(certs.ca.parent), "--node-key", str(good.public_key),
        "--quorum-timeout", "120", "--round-timeout", "120", "--timeout", "400",
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "300"}  # rich wraps its log lines at the terminal width
    run = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    # The SuperNode starts first and retries (its supervisor restarts it) until the
    # SuperLink is up and its key registered: the order a fleet sees after a cloud restart.
    node = SuperNodeSupervisor(
        lambda: supernode_command(
            FlConfig(
                enabled=True,
                superlink=f"127.0.0.1:{port}",
                insecure=False,
                root_certificates=str(certs.ca),
                auth_private_key=str(good.private_key),
                auth_public_key=str(good.public_key),
                max_cpu_percent=0.0,
            ),
            db,
        ),
        logging.getLogger("test.fl.tlscli"),
        restart_min_s=0.5,
        restart_max_s=2.0,
    ).start()
    try:
        out, _ = run.communicate(timeout=420)
    finally:
        node.stop()
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, out[-3000:]
    assert "(TLS, SuperNode authentication)" in out
    assert "SuperNode key good.pub registered" in out
    assert "1 of 1 rounds aggregated" in out
