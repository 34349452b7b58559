"""``edgefleet bridge``: watch a serial link (monitor) or run an emulated MCU on a pty (emulate)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgefleet.firmware_bridge.emulator import EmulatorConfig, McuEmulator
from edgefleet.firmware_bridge.errors import LinkTimeout
from edgefleet.firmware_bridge.lines import ChannelMap
from edgefleet.firmware_bridge.link import MODES, Reading, SerialLink
from edgefleet.firmware_bridge.messages import InferenceResult, LogLine, SampleBatch, Status
from edgefleet.protocol.errors import ConfigError

app = typer.Typer(
    help="Serial bridge to microcontrollers: monitor, emulate.",
    no_args_is_help=True,
    add_completion=False,
)


def _describe(reading: Reading) -> str:
    if isinstance(reading, SampleBatch):
        last = ", ".join(
            f"{n}={v:.4g}" for n, v in zip(reading.channels, reading.values[-1], strict=True)
        )
        return (
            f"[cyan]samples[/] seq={reading.seq} t0={reading.t0:.6f} "
            f"n={len(reading.values)} last: {last}"
        )
    if isinstance(reading, Status):
        boot = " [yellow]boot[/]" if reading.booted else ""
        return (
            f"[green]status[/] uptime={reading.uptime_ms} ms rate={reading.sample_rate_hz:g} Hz "
            f"tx_dropped={reading.tx_dropped}{boot}"
        )
    if isinstance(reading, LogLine):
        return f"[magenta]log[/] level={reading.level} {reading.text!r}"
    assert isinstance(reading, InferenceResult)
    return f"[blue]inference[/] t={reading.t:.6f} label={reading.label} score={reading.score:.3f}"


def _counters(stats: dict[str, int]) -> Table:
    table = Table(title="link counters")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        table.add_row(key, str(value))
    return table


async def _monitor(link: SerialLink, frames: int, seconds: float, quiet: bool, out: Console) -> int:
    count = 0
    deadline = time.monotonic() + seconds if seconds > 0 else None
    async with link:
        while frames <= 0 or count < frames:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            wait = link.read_timeout if left is None else min(left, link.read_timeout or left)
            try:
                reading = await link.receive(wait)
            except LinkTimeout as exc:
                if deadline is None or time.monotonic() < deadline:
                    out.print(f"[yellow]{exc}[/]")
                continue
            count += 1
            if not quiet:
                out.print(_describe(reading), highlight=False)
    return count


@app.command()
def monitor(
    *,
    port: Annotated[str, typer.Option("--port", help="Serial port path, e.g. /dev/ttyACM0.")],
    baud: Annotated[int, typer.Option(help="Baud rate (ignored by USB CDC and ptys).")] = 115200,
    mode: Annotated[str, typer.Option(help="framed (COBS frames) or line (CSV/JSON).")] = "framed",
    channels: Annotated[str, typer.Option(help="Channel names, comma-separated.")] = "",
    line_format: Annotated[str, typer.Option(help="Line mode: auto, csv or json.")] = "auto",
    columns: Annotated[str, typer.Option(help="Line mode: CSV column names.")] = "",
    time_key: Annotated[str, typer.Option(help="Line mode: column/key of the MCU time.")] = "",
    time_scale: Annotated[float, typer.Option(help="Seconds per unit of the time key.")] = 1.0,
    frames: Annotated[int, typer.Option(help="Stop after this many readings (0: never).")] = 0,
    seconds: Annotated[float, typer.Option(help="Stop after this many seconds (0: never).")] = 0,
    read_timeout: Annotated[float, typer.Option(help="Warn after this long silent.")] = 5.0,
    quiet: Annotated[bool, typer.Option(help="Print only the counters at the end.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the counters as one JSON line at the end.")
    ] = False,
) -> None:
    """Print decoded frames (or lines) from a serial port, then the error counters."""
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    names = tuple(n.strip() for n in channels.split(",") if n.strip())
    try:
        channel_map = ChannelMap(
            channels=names,
            format=line_format,  # type: ignore[arg-type]
            columns=tuple(c.strip() for c in columns.split(",") if c.strip()),
            time_key=time_key or None,
            time_scale=time_scale,
        )
    except ValueError as exc:
        raise ConfigError(f"bad line-mode options: {exc}") from None
    link = SerialLink(
        port,
        baud,
        mode=mode,  # type: ignore[arg-type]
        channels=names,
        channel_map=channel_map,
        read_timeout=read_timeout,
    )
    out = Console(highlight=False)
    count = 0
    with contextlib.suppress(KeyboardInterrupt):
        count = asyncio.run(_monitor(link, frames, seconds, quiet, out))
    stats = {"readings": count, **link.stats.snapshot()}
    if json_out:
        print(json.dumps(stats))  # machine-readable: no rich markup
    else:
        out.print(_counters(stats))


@app.command()
def emulate(
    *,
    rate: Annotated[float, typer.Option(help="Samples per second per channel.")] = 100.0,
    channels: Annotated[int, typer.Option(help="Number of channels.")] = 3,
    batch: Annotated[int, typer.Option(help="Samples per frame (or lines per tick).")] = 10,
    noise: Annotated[float, typer.Option(help="Gaussian noise on the sine signals.")] = 0.05,
    garbage_every: Annotated[float, typer.Option(help="Mean s between garbage bursts.")] = 0.0,
    drop_prob: Annotated[float, typer.Option(help="Probability of dropping each byte.")] = 0.0,
    disconnect_every: Annotated[float, typer.Option(help="Unplug every N s (0: never).")] = 0.0,
    disconnect_for: Annotated[float, typer.Option(help="Stay unplugged for N s.")] = 0.5,
    mode: Annotated[str, typer.Option(help="framed or line.")] = "framed",
    line_format: Annotated[str, typer.Option(help="Line mode output: csv or json.")] = "csv",
    seed: Annotated[int, typer.Option(help="Seed of the signal and the faults.")] = 0,
    link: Annotated[
        Path | None, typer.Option(help="Stable port path to create (default: a temp dir).")
    ] = None,
    seconds: Annotated[float, typer.Option(help="Exit after N seconds (0: until Ctrl-C).")] = 0,
) -> None:
    """Run an emulated MCU on a pseudo-terminal; prints the port path, runs until Ctrl-C."""
    try:
        config = EmulatorConfig(
            rate_hz=rate,
            channels=channels,
            batch=batch,
            noise=noise,
            garbage_every=garbage_every,
            drop_prob=drop_prob,
            disconnect_every=disconnect_every,
            disconnect_for=disconnect_for,
            mode=mode,  # type: ignore[arg-type]
            line_format=line_format,  # type: ignore[arg-type]
            seed=seed,
        )
    except ValueError as exc:
        raise ConfigError(f"bad emulator option: {exc}") from None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_emulate(McuEmulator(config, path=link), seconds))


async def _emulate(mcu: McuEmulator, seconds: float) -> None:
    async with mcu:
        # The first line is the path alone, so scripts can read it; the hint goes to stderr.
        print(mcu.path, flush=True)
        Console(stderr=True).print(
            f"emulated MCU on {mcu.path}: edgefleet bridge monitor --port {mcu.path}"
            + (" --mode line" if mcu.config.mode == "line" else ""),
            highlight=False,
        )
        if seconds > 0:
            await asyncio.sleep(seconds)
        else:
            await asyncio.Event().wait()
