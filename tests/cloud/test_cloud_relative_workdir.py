"""`edgefleet cloud run` from any current directory: relative paths are made absolute on entry.

Mosquitto (and Flower's ServerApp) run with their own current directory, so a relative work
directory handed to them names a file that is not there. These start the real command as a
child process, from a directory other than the one the paths are relative to.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import typer
from support.mqtt import Probe

from edgefleet.cloud.app import CloudConfig
from edgefleet.cloud.broker import MosquittoBroker, mosquitto_available
from edgefleet.cloud.fl.runs.service import FlServiceSettings


def _start(cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    """``edgefleet cloud run ARGS`` with ``cwd`` as its current directory."""
    cmd = [sys.executable, "-m", "edgefleet.cli", "cloud", "run", "--http", "127.0.0.1:0", *args]
    with open(cwd / "cloud.log", "wb") as log:  # the child keeps its own copy of the fd
        return subprocess.Popen(
            cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_ready(proc: subprocess.Popen[bytes], ready: Path, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"cloud run did not get ready; its log:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    info: dict[str, Any] = json.loads(ready.read_text())
    return info


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def _check_serving(info: dict[str, Any]) -> None:
    """The API answers and the broker it started relays a message."""
    with httpx.Client(base_url=info["http_url"], timeout=10) as http:
        assert http.get("/healthz").json()["ok"] is True
    host, _, port = info["broker_url"].removeprefix("mqtt://").rpartition(":")
    probe = Probe(host, int(port))
    try:
        probe.subscribe("edgefleet/v1/relpath/#")
        probe.publish("edgefleet/v1/relpath/d-1/event/hello", b"hi")
        assert probe.wait_for(lambda ms: any(m.payload == b"hi" for m in ms), 10)
    finally:
        probe.close()


@pytest.mark.slow(seconds=15)
@pytest.mark.skipif(not mosquitto_available(), reason="needs Mosquitto (make test installs it)")
def test_cloud_run_with_no_workdir_option_works_from_any_directory(tmp_path: Path) -> None:
    here = tmp_path / "here"
    here.mkdir()
    # The ready file is relative too: every path option resolves against the current directory.
    proc = _start(here, "--ready-file", "ready.json")
    try:
        info = _wait_ready(proc, here / "ready.json", here / "cloud.log")
        _check_serving(info)
        state = here / ".edgefleet-cloud"
        assert (state / "broker" / "mosquitto.conf").is_file()
        assert info["db_url"] == f"sqlite:///{state.resolve() / 'edgefleet.db'}"
    finally:
        rc = _stop(proc)
    assert rc == 0, (here / "cloud.log").read_text()


@pytest.mark.slow(seconds=15)
@pytest.mark.skipif(not mosquitto_available(), reason="needs Mosquitto (make test installs it)")
def test_cloud_run_with_relative_workdir_from_another_directory(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    ready = tmp_path / "ready.json"
    proc = _start(other, "--workdir", "sub/dir", "--ready-file", str(ready))
    try:
        info = _wait_ready(proc, ready, other / "cloud.log")
        _check_serving(info)
        conf = (other / "sub" / "dir" / "broker" / "mosquitto.conf").read_text()
        # Mosquitto's persistence directory is absolute: it runs in its own directory.
        assert f"persistence_location {(other / 'sub' / 'dir' / 'broker').resolve()}" in conf
    finally:
        rc = _stop(proc)
    assert rc == 0, (other / "cloud.log").read_text()


def test_cloud_config_resolves_every_path_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    config = CloudConfig(
        workdir=Path("state"),
        db_url="sqlite:///db/x.db",
        registry_dir=Path("reg"),
        trusted_keys=(Path("keys/a.pub"),),
        fl=FlServiceSettings(workdir=Path("fl"), signing_key=Path("keys/a.key")),
    )
    assert config.workdir == tmp_path / "state"
    assert config.db_url == f"sqlite:///{tmp_path / 'db' / 'x.db'}"
    assert config.registry_dir == tmp_path / "reg"
    assert config.trusted_keys == (tmp_path / "keys" / "a.pub",)
    assert config.fl is not None
    assert config.fl.workdir == tmp_path / "fl"
    assert config.fl.signing_key == tmp_path / "keys" / "a.key"
    # A copy made later with a relative path is resolved as well.
    assert replace(config, workdir=Path("again")).workdir == tmp_path / "again"
    # Absolute values and other stores are left as they are.
    pg = CloudConfig(workdir=tmp_path, db_url="postgresql://u@127.0.0.1/x")
    assert pg.db_url == "postgresql://u@127.0.0.1/x"
    assert pg.workdir == tmp_path


def test_broker_work_directory_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not mosquitto_available():
        pytest.skip("needs Mosquitto")
    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    broker = MosquittoBroker(Path("b"))
    assert broker.workdir == tmp_path / "b"
    assert broker.command()[-1] == str(tmp_path / "b" / "mosquitto.conf")


def _path_options(cmd: click.Command, prefix: str = "") -> list[tuple[str, click.Path]]:
    """(command and option, its type) of every path option, sub-commands included."""
    name = f"{prefix}{cmd.name} "
    found = [
        (name + param.opts[0], param.type)
        for param in cmd.params
        if isinstance(param, click.Option) and isinstance(param.type, click.Path)
    ]
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            found += _path_options(sub, name)
    return found


@pytest.mark.parametrize(
    "module",
    ["edgefleet.cloud.cli", "edgefleet.cloud.fl.cli", "edgefleet.models.cli", "edgefleet.keys_cli"],
)
def test_every_path_option_is_resolved_where_it_enters(module: str) -> None:
    options = _path_options(typer.main.get_command(importlib.import_module(module).app))
    assert options, f"{module} has no path options to check"
    # `fl certs` only writes and reads files in this process: no child is handed its paths.
    options = [(name, kind) for name, kind in options if not name.startswith(" certs ")]
    assert [name for name, kind in options if not kind.resolve_path] == []
