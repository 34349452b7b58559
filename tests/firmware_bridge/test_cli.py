"""``edgefleet bridge emulate`` and ``monitor`` as a user runs them: real processes, real ptys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``edgefleet bridge emulate`` running in the background; yields it and its port path."""
    link = tmp_path / "mcu"
    # A terminal's Ctrl-C reaches a process whose SIGINT is at its default. The test process
    # may have it ignored (something earlier in the xdist worker set SIG_IGN), and an ignored
    # disposition survives exec, so the child would never see KeyboardInterrupt. A handled
    # signal is reset to the default by exec: handle it here while the child starts.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    proc = subprocess.Popen(
        [
            *EDGEFLEET,
            "bridge",
            "emulate",
            "--rate",
            "500",
            "--garbage-every",
            "0.1",
            "--link",
            str(link),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    signal.signal(signal.SIGINT, previous)
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path == str(link)
        yield proc, path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def monitor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGEFLEET, "bridge", "monitor", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_monitor_prints_frames_from_the_emulator_and_stops_after_n(emulator) -> None:
    _, path = emulator
    out = monitor("--port", path, "--frames", "5")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("samples seq=") + out.stdout.count("status uptime") == 5
    assert "link counters" in out.stdout


def test_monitor_json_counters_and_time_limit(emulator) -> None:
    _, path = emulator
    out = monitor("--port", path, "--seconds", "1", "--quiet", "--json")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["readings"] > 10
    assert stats["connects"] == 1
    # The emulator sends a garbage burst every 0.1 s on average: each ruins a frame, counted.
    errors = {k: v for k, v in stats.items() if k.startswith("error.")}
    assert sum(errors.values()) > 0, stats


def test_emulate_stops_cleanly_on_ctrl_c(emulator) -> None:
    proc, path = emulator
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert not os.path.lexists(path)


def test_monitor_line_mode(tmp_path: Path) -> None:
    link = tmp_path / "mcu"
    proc = subprocess.Popen(
        [*EDGEFLEET, "bridge", "emulate", "--mode", "line", "--link", str(link), "--seconds", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(link)
        out = monitor(
            "--port",
            str(link),
            "--mode",
            "line",
            "--columns",
            "t,x,y,z",
            "--time-key",
            "t",
            "--frames",
            "3",
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("samples seq=") == 3
        assert "x=" in out.stdout
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_monitor_missing_port_fails_with_a_message(tmp_path: Path) -> None:
    out = monitor("--port", str(tmp_path / "nothing"), "--frames", "1")
    assert out.returncode == 1
    assert "cannot open" in out.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["monitor", "--port", "/dev/null", "--mode", "morse"], "--mode"),
        (["monitor", "--port", "/dev/null", "--line-format", "xml"], "line format"),
        (["emulate", "--rate", "0"], "rate_hz"),
        (["emulate", "--drop-prob", "2"], "drop_prob"),
    ],
)
def test_bad_options_are_config_errors(args: list[str], needle: str) -> None:
    out = subprocess.run(
        [*EDGEFLEET, "bridge", *args], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 4
    assert needle in out.stderr
