"""The cloud's ``mcu`` commands reach an emulated MCU over a real pty, and its answers come back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from support.commit_acker import CommitAcker
from support.edge_agent import AgentThread, agent_toml, make_config
from support.pty_tools import raw_pty, wait_until

from edgefleet.edge.agent import Agent
from edgefleet.edge.config import AgentConfig
from edgefleet.edge.sources.serial import SerialSource
from edgefleet.firmware_bridge import EmulatorConfig, McuEmulator, SetActuator, SetSampleRate
from edgefleet.protocol import topics
from edgefleet.protocol.codec import encode
from edgefleet.protocol.messages import (
    CommandAck,
    McuAction,
    McuActuator,
    McuCommand,
    McuPing,
    McuSetSampleRate,
)

DEVICE = "serial-cmd-1"


def serial_config(data: Path, port: int, tty: str, bundle: Path, pub: Path) -> AgentConfig:
    text = agent_toml(data, port, device=DEVICE, bundle=bundle, keys=[pub]).replace(
        'kind = "simulated"',
        f'kind = "serial"\nport = "{tty}"\nchannels = ["ax", "ay", "az"]\nread_timeout_s = 0.5',
    )
    # 400 Hz, the tiny bundle's sample rate: the agent refuses a bundle made for another rate.
    return make_config(text)


def mcu_command(cid: str, action: McuAction) -> bytes:
    return encode(
        McuCommand(
            device_id="cloud",
            boot_id="cloud",
            seq=1,
            sent_at=time.time(),
            command_id=cid,
            action=action,
        )
    )


def ack_of(acker: CommitAcker, cid: str) -> CommandAck | None:
    with acker._cond:
        return next((a for a in acker.acks if a.command_id == cid), None)


def test_mcu_commands_from_the_broker_reach_the_emulated_mcu_and_are_acked(
    mosquitto, tmp_path: Path, good_bundle: Path, trusted_pub: Path
) -> None:
    acker = CommitAcker(mosquitto.host, mosquitto.port)
    topic = topics.command("default", DEVICE, "mcu")

    async def send(cid: str, action: McuAction) -> CommandAck:
        acker.client.publish(topic, mcu_command(cid, action), qos=1)
        await wait_until(lambda: ack_of(acker, cid) is not None, 20, f"the ack of {cid}")
        ack = ack_of(acker, cid)
        assert ack is not None
        assert ack.command == "mcu"
        return ack

    async def main() -> None:
        async with McuEmulator(EmulatorConfig(rate_hz=400, channels=3, batch=10)) as mcu:
            cfg = serial_config(tmp_path / "d", mosquitto.port, mcu.path, good_bundle, trusted_pub)
            agent = Agent(cfg)
            task = asyncio.create_task(agent.run())
            try:
                await wait_until(lambda: agent.ready.is_set() or task.done(), 30, "agent start")
                assert not task.done(), task
                source = agent.source
                assert isinstance(source, SerialSource)
                await wait_until(lambda: source.link.connected, 10, "the port to open")
                # The birth follows the command subscription on the same connection: once the
                # broker has passed it on, a command published now is not lost (on a loaded
                # machine the agent may connect well after it is ready).
                await wait_until(
                    lambda: any(
                        st.device_id == DEVICE and st.state == "online" for st in acker.statuses
                    ),
                    30,
                    "the agent's birth",
                )

                ack = await send("m-act", McuActuator(index=1, value=0.75))
                assert (ack.status, ack.reason) == ("succeeded", None), ack
                assert ack.data["op"] == "actuator"
                assert mcu.actuators == {1: 0.75}

                ack = await send("m-rate", McuSetSampleRate(hz=500.0))
                assert ack.status == "succeeded", ack
                assert mcu.rate_hz == 500.0

                # The emulator has actuators 0-3: index 7 is refused by the MCU itself.
                ack = await send("m-bad", McuActuator(index=7, value=1.0))
                assert (ack.status, ack.reason) == ("failed", "nack"), ack
                assert ack.data["nack"] == "bad_args"
                assert 7 not in mcu.actuators

                # A lost MCU ack: the link resends the same frame, the MCU answers it once more.
                mcu.lost_acks = 1
                ack = await send("m-ping", McuPing())
                assert ack.status == "succeeded", ack
                assert mcu.stats.duplicate_commands == 1
                assert source.link.stats.command_retries >= 1

                mcu.deaf_commands = 100
                ack = await send("m-deaf", McuPing())
                assert (ack.status, ack.reason) == ("failed", "no-ack"), ack
            finally:
                agent.stop()
                await asyncio.wait_for(task, 20)
            ran = [c for c in mcu.commands if isinstance(c, SetActuator | SetSampleRate)]
            assert ran == [SetActuator(1, 0.75), SetSampleRate(500.0), SetActuator(7, 1.0)]

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        acker.close()


def test_an_agent_without_an_mcu_refuses_mcu_commands(
    mosquitto, tmp_path: Path, good_bundle: Path, trusted_pub: Path
) -> None:
    acker = CommitAcker(mosquitto.host, mosquitto.port)
    text = agent_toml(
        tmp_path / "d", mosquitto.port, device="sim-1", bundle=good_bundle, keys=[trusted_pub]
    )
    runner = AgentThread(make_config(text))
    try:
        runner.wait_ready()
        acker.client.publish(
            topics.command("default", "sim-1", "mcu"), mcu_command("m-1", McuPing()), qos=1
        )
        assert acker.wait_for(lambda a: ack_of(a, "m-1") is not None)
        ack = ack_of(acker, "m-1")
        assert ack is not None
        assert (ack.status, ack.reason) == ("refused", "no-mcu")
    finally:
        runner.stop()
        acker.close()


def test_a_line_mode_or_unopened_serial_source_answers_without_touching_the_port() -> None:
    async def main() -> None:
        with raw_pty() as (_master, path):
            line = SerialSource(path, mode="line", channels=("a",))
            out = await line.mcu_command(McuPing())
            assert (out.status, out.reason) == ("refused", "line-mode")
            framed = SerialSource(path, channels=("a",))
            out = await framed.mcu_command(McuPing())
            assert (out.status, out.reason) == ("failed", "not-connected")
            assert framed.link.stats.commands == 0

    asyncio.run(asyncio.wait_for(main(), 30))
