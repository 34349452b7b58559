"""End to end: an agent reads an emulated MCU over a real pty and publishes to real Mosquitto."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from support.commit_acker import CommitAcker
from support.edge_agent import agent_toml, make_config
from support.pty_tools import wait_until

from edgefleet.edge.agent import Agent
from edgefleet.edge.config import AgentConfig
from edgefleet.edge.dryrun import dry_run
from edgefleet.edge.sources.base import Chunk
from edgefleet.edge.sources.serial import SerialSource
from edgefleet.firmware_bridge import EmulatorConfig, McuEmulator, SampleBatch
from edgefleet.firmware_bridge.frames import decode_frame
from edgefleet.protocol.messages import Event

DEVICE = "serial-1"


def serial_config(data: Path, port: int, tty: str, bundle: Path, pub: Path) -> AgentConfig:
    text = agent_toml(data, port, device=DEVICE, bundle=bundle, keys=[pub]).replace(
        'kind = "simulated"',
        f'kind = "serial"\nport = "{tty}"\nchannels = ["ax", "ay", "az"]\n'
        "read_timeout_s = 0.5\nreport_interval_s = 0.2\nreconnect_min_s = 0.05",
    )
    # 400 Hz, the tiny bundle's sample rate: the agent refuses a bundle made for another rate.
    return make_config(text)


class RecordingSerialSource(SerialSource):
    """A serial source that keeps a copy of every chunk it hands to the pipeline."""

    def __init__(self, port: str) -> None:
        super().__init__(
            port,
            channels=("ax", "ay", "az"),
            rate_hz=400,
            chunk=64,
            read_timeout=0.5,
            reconnect_min=0.05,
            report_interval=0.2,
        )
        self.seen: list[np.ndarray] = []

    async def read(self) -> Chunk | None:
        chunk = await super().read()
        if chunk is not None:
            self.seen.append(chunk.samples.copy())
        return chunk


def sent_rows(mcu: McuEmulator) -> np.ndarray:
    rows: list[tuple[float, ...]] = []
    for frame in mcu.sent.values():
        msg = decode_frame(frame[:-1]).message
        assert isinstance(msg, SampleBatch)
        rows.extend(msg.values)
    return np.asarray(rows, dtype=np.float32)


def serial_events(acker: CommitAcker) -> list[Event]:
    with acker._cond:
        msgs = list(acker.messages)
    return [m for _t, m in msgs if isinstance(m, Event) and m.kind == "serial"]


def error_total(data: dict[str, object]) -> int:
    """Frames dropped for any reason, from a counter snapshot (``error.<reason>`` keys)."""
    return sum(v for k, v in data.items() if k.startswith("error.") and isinstance(v, int))


@pytest.mark.slow
def test_agent_reads_an_emulated_mcu_survives_replug_and_garbage_and_publishes(
    mosquitto, tmp_path: Path, good_bundle: Path, trusted_pub: Path
) -> None:
    acker = CommitAcker(mosquitto.host, mosquitto.port)
    mcu_cfg = EmulatorConfig(
        rate_hz=400, channels=3, batch=10, noise=0.05, garbage_every=0.2, seed=21
    )

    async def main() -> None:
        async with McuEmulator(mcu_cfg) as mcu:
            cfg = serial_config(tmp_path / "d", mosquitto.port, mcu.path, good_bundle, trusted_pub)
            source = RecordingSerialSource(mcu.path)
            agent = Agent(cfg, source=source)
            task = asyncio.create_task(agent.run())
            try:
                await wait_until(lambda: agent.ready.is_set() or task.done(), 30, "agent start")
                assert not task.done(), task
                await wait_until(lambda: acker.inference_records(DEVICE) >= 40, 20, "results")
                mcu.unplug()
                await wait_until(lambda: not source.link.connected, 5, "the unplug to be seen")
                mcu.plug()
                before = acker.inference_records(DEVICE)
                await wait_until(
                    lambda: acker.inference_records(DEVICE) >= before + 40, 20, "results again"
                )
                await wait_until(
                    lambda: any("back" in e.message for e in serial_events(acker)),
                    10,
                    "the port-back event",
                )
                await wait_until(
                    lambda: any(error_total(e.data) > 0 for e in serial_events(acker)),
                    10,
                    "an event with the garbage counted",
                )
            finally:
                agent.stop()
                await asyncio.wait_for(task, 20)
            # The agent was never restarted: one boot, and every result it made is stored.
            assert len(acker.seqs(DEVICE)) == 1
            counters = source.counters()
            assert counters["connects"] == 2
            assert counters["disconnects"] == 1
            assert error_total(dict(counters)) > 0
            # No corrupt sample reached the pipeline: everything it got, the MCU sent, in order.
            got = np.concatenate(source.seen)
            sent = sent_rows(mcu)
            j = 0
            for row in got:
                while j < len(sent) and not np.array_equal(sent[j], row):
                    j += 1
                assert j < len(sent), f"row {row} was never sent by the MCU (or is out of order)"
                j += 1
            messages = [e.message for e in serial_events(acker)]
            assert f"serial port {mcu.path} lost" in messages

    try:
        asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        acker.close()


def test_agent_check_reads_a_serial_source_built_from_config(
    tmp_path: Path, good_bundle: Path, trusted_pub: Path
) -> None:
    async def main() -> None:
        async with McuEmulator(EmulatorConfig(rate_hz=400, channels=3, batch=10)) as mcu:
            cfg = serial_config(tmp_path / "d", 1, mcu.path, good_bundle, trusted_pub)
            lines = await dry_run(cfg, windows=3)
            assert any(line.startswith("source: serial ['ax', 'ay', 'az']") for line in lines)

    asyncio.run(asyncio.wait_for(main(), 60))
