"""SerialLink against the MCU emulator over real pseudo-terminals: loss, unplug, commands."""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from support.pty_tools import collect, raw_pty, wait_until

from edgefleet.firmware_bridge.emulator import EmulatorConfig, McuEmulator
from edgefleet.firmware_bridge.errors import (
    CommandNacked,
    CommandTimeout,
    LinkClosed,
    LinkError,
    LinkTimeout,
    PortUnavailable,
)
from edgefleet.firmware_bridge.frames import encode_frame
from edgefleet.firmware_bridge.lines import LineParser
from edgefleet.firmware_bridge.link import SerialLink
from edgefleet.firmware_bridge.messages import (
    MAX_RATE_HZ,
    Ack,
    NackCode,
    Ping,
    Reboot,
    SampleBatch,
    SetActuator,
    SetSampleRate,
    Status,
)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def path_exists(path: str) -> bool:
    return os.path.lexists(path)


def batches(readings: list[Any]) -> list[SampleBatch]:
    return [r for r in readings if isinstance(r, SampleBatch)]


async def _drain_sent_before(link: SerialLink, last_sent: int) -> None:
    """Receive until the link times out; every batch must be one sent by ``last_sent``."""
    while True:
        got = await link.receive(0.2)
        if isinstance(got, SampleBatch):
            assert got.seq <= last_sent


def test_emulator_samples_reach_the_link_intact() -> None:
    async def main() -> None:
        async with (
            McuEmulator(EmulatorConfig(rate_hz=1000, channels=3, batch=10)) as mcu,
            SerialLink(mcu.path, channels=("x", "y", "z")) as link,
        ):
            got = batches(await collect(link, lambda r: len(batches(r)) >= 20))
            for b in got:
                assert b.channels == ("x", "y", "z")
                assert len(b.values) == 10
                assert encode_frame(b, b.seq) == mcu.sent[b.seq]
            assert link.stats.decoder.error_total <= 1  # at most the frame cut by opening

    run(main())


def test_highest_rate_with_one_percent_byte_loss_delivers_or_counts_every_frame() -> None:
    cfg = EmulatorConfig(rate_hz=MAX_RATE_HZ, channels=1, batch=10, drop_prob=0.01, seed=3)

    async def main() -> None:
        async with McuEmulator(cfg) as mcu, SerialLink(mcu.path) as link:
            got = batches(await collect(link, lambda r: len(batches(r)) >= 600, within=30))
            for b in got:  # intact: byte for byte what the emulator sent
                assert encode_frame(b, b.seq) == mcu.sent[b.seq]
            stats = link.stats.decoder
            assert stats.first_seq is not None
            assert stats.last_seq is not None
            # Every frame from the first to the latest decoded was delivered or counted lost.
            span = (stats.last_seq - stats.first_seq) % 65536 + 1
            assert stats.messages + stats.lost_frames == span
            assert stats.seq_resets == 0
            assert stats.lost_frames > 0
            assert stats.error_total > 0
            assert mcu.stats.bytes_dropped > 0
            assert link.stats.queue_drops == 0

    run(main())


def test_unplug_and_replug_recovers_without_restarting_the_consumer() -> None:
    async def main() -> None:
        async with (
            McuEmulator(EmulatorConfig(rate_hz=500, batch=5)) as mcu,
            SerialLink(mcu.path, reconnect_interval=0.02) as link,
        ):
            before = await collect(link, lambda r: len(batches(r)) >= 5)
            mcu.unplug()
            last_sent = max(mcu.sent)
            assert not path_exists(mcu.path)
            await wait_until(lambda: not link.connected, what="the link to notice the unplug")
            # Batches read before the unplug may still be queued (a loaded machine reads ahead
            # of the consumer); nothing sent after it can arrive.
            with pytest.raises(LinkTimeout):
                await _drain_sent_before(link, last_sent)
            await asyncio.sleep(0.1)  # the link retries the missing path meanwhile
            mcu.plug()
            await link.wait_connected(10)
            after = await collect(link, lambda r: len(batches(r)) >= 5)
            assert batches(after)[0].seq > batches(before)[-1].seq
            assert link.stats.disconnects == 1
            assert link.stats.connects == 2
            for b in batches(after):
                assert encode_frame(b, b.seq) == mcu.sent[b.seq]

    run(main())


def test_scheduled_disconnects_are_survived_by_async_for() -> None:
    cfg = EmulatorConfig(rate_hz=1000, batch=10, disconnect_every=0.3, disconnect_for=0.1)

    async def main() -> None:
        async with McuEmulator(cfg) as mcu, SerialLink(mcu.path, reconnect_interval=0.02) as link:
            count = 0
            async for reading in link:
                count += isinstance(reading, SampleBatch)
                if mcu.stats.unplugs >= 2 and link.stats.connects >= 3 and count >= 60:
                    break
            assert link.stats.disconnects >= 2
            assert link.stats.decoder.lost_frames > 0  # frames sent while unplugged

    run(main())


def test_commands_are_acked_and_change_the_mcu() -> None:
    async def main() -> None:
        async with (
            McuEmulator(EmulatorConfig(rate_hz=200)) as mcu,
            SerialLink(mcu.path) as link,
        ):
            ack = await link.send_command(SetSampleRate(50))
            assert isinstance(ack, Ack)
            assert mcu.rate_hz == 50
            await link.send_command(SetActuator(1, 0.25))
            assert mcu.actuators == {1: 0.25}
            await link.send_command(Ping())
            with pytest.raises(CommandNacked) as info:
                await link.send_command(SetActuator(9, 1.0))
            assert info.value.code == NackCode.BAD_ARGS
            assert info.value.reason == "nack"
            assert (link.stats.acks, link.stats.nacks) == (3, 1)

    run(main())


def test_reboot_is_acked_then_seen_as_a_boot_and_a_seq_reset() -> None:
    async def main() -> None:
        async with McuEmulator(EmulatorConfig(rate_hz=200)) as mcu, SerialLink(mcu.path) as link:
            await collect(link, lambda r: len(batches(r)) >= 3)
            await link.send_command(Reboot())
            await collect(link, lambda r: any(isinstance(x, Status) and x.booted for x in r))
            assert link.stats.decoder.seq_resets >= 1

    run(main())


def test_lost_command_is_retried() -> None:
    async def main() -> None:
        async with McuEmulator() as mcu, SerialLink(mcu.path, ack_timeout=0.1) as link:
            mcu.deaf_commands = 2
            await link.send_command(SetSampleRate(20))
            assert link.stats.command_retries == 2
            assert mcu.rate_hz == 20

    run(main())


def test_lost_ack_makes_a_resend_that_does_not_run_twice() -> None:
    async def main() -> None:
        async with McuEmulator() as mcu, SerialLink(mcu.path, ack_timeout=0.1) as link:
            mcu.lost_acks = 1
            await link.send_command(SetActuator(0, 1.0))
            assert mcu.stats.commands == 1
            assert mcu.stats.duplicate_commands == 1
            assert link.stats.command_retries == 1

    run(main())


def test_unanswered_command_times_out() -> None:
    async def main() -> None:
        async with McuEmulator() as mcu, SerialLink(mcu.path) as link:
            mcu.deaf_commands = 100
            with pytest.raises(CommandTimeout) as info:
                await link.send_command(Ping(), ack_timeout=0.05, retries=2)
            assert info.value.reason == "no-ack"
            assert link.stats.command_retries == 2

    run(main())


def test_silent_port_makes_receive_raise_read_timeout_and_it_can_go_on() -> None:
    async def main() -> None:
        with raw_pty() as (master, path):
            async with SerialLink(path, read_timeout=0.1) as link:
                with pytest.raises(LinkTimeout):
                    await link.receive()
                os.write(master, encode_frame(Status(5, 1.0), 0))
                reading = await link.receive()
                assert reading == Status(5, 1.0)
                assert link.stats.timeouts == 1

    run(main())


def test_async_for_goes_on_through_an_outage_longer_than_read_timeout() -> None:
    read_timeout = 0.1

    async def main() -> None:
        async with (
            McuEmulator(EmulatorConfig(rate_hz=500, batch=5)) as mcu,
            SerialLink(mcu.path, read_timeout=read_timeout, reconnect_interval=0.02) as link,
        ):
            got: list[SampleBatch] = []

            async def consume() -> None:
                async for reading in link:
                    if isinstance(reading, SampleBatch):
                        got.append(reading)

            consumer = asyncio.create_task(consume())
            try:
                await wait_until(lambda: len(got) >= 5, what="readings before the outage")
                mcu.unplug()
                await wait_until(lambda: not link.connected, what="the unplug to be seen")
                # Silent for many read timeouts: counted, and the loop is still there.
                await wait_until(lambda: link.stats.timeouts >= 3, what="timeouts counted")
                assert not consumer.done()
                before = len(got)
                mcu.plug()
                await wait_until(lambda: len(got) >= before + 5, what="readings after the outage")
                assert not consumer.done()
            finally:
                consumer.cancel()
            assert link.stats.connects == 2
            assert got[before].seq > got[before - 1].seq

    run(main())


def test_missing_port_is_a_typed_error(tmp_path: Path) -> None:
    async def main() -> None:
        link = SerialLink(str(tmp_path / "nope"), open_timeout=0.1, reconnect_interval=0.02)
        with pytest.raises(PortUnavailable) as info:
            await link.open()
        assert info.value.reason == "port-unavailable"

    run(main())


def test_open_waits_for_a_port_that_appears() -> None:
    async def main() -> None:
        mcu = McuEmulator()
        link = SerialLink(mcu.path, open_timeout=10, reconnect_interval=0.02)
        opening = asyncio.ensure_future(link.open())
        await asyncio.sleep(0.1)
        assert not opening.done()
        async with mcu:
            await opening
            await collect(link, lambda r: len(batches(r)) >= 1)
            await link.close()

    run(main())


def test_close_ends_iteration_and_refuses_commands() -> None:
    async def main() -> None:
        async with McuEmulator() as mcu:
            link = await SerialLink(mcu.path).open()
            await collect(link, lambda r: len(r) >= 1)
            await link.close()
            rest = [r async for r in link]  # what was queued, then the end: no hang
            assert len(rest) < 4096
            with pytest.raises(LinkClosed):
                await link.receive(1)
            with pytest.raises(LinkClosed):
                await link.send_command(Ping())

    run(main())


def test_frames_the_mcu_could_not_send_are_reported_in_its_status() -> None:
    cfg = EmulatorConfig(rate_hz=MAX_RATE_HZ, channels=8, batch=10, status_every=0.2)

    async def main() -> None:
        async with McuEmulator(cfg) as mcu:
            # Nobody reads the port: the pty's buffer fills and, like a USB CDC device, the
            # MCU drops whole frames instead of blocking.
            await wait_until(lambda: mcu.stats.frames_dropped > 0, what="a full transmit buffer")
            async with SerialLink(mcu.path) as link:
                got = await collect(
                    link, lambda r: any(isinstance(x, Status) and x.tx_dropped for x in r)
                )
            status = next(x for x in got if isinstance(x, Status) and x.tx_dropped)
            assert 0 < status.tx_dropped <= mcu.stats.frames_dropped

    run(main())


def test_slow_consumer_loses_the_oldest_readings_counted() -> None:
    async def main() -> None:
        async with (
            McuEmulator(EmulatorConfig(rate_hz=2000, batch=10)) as mcu,
            SerialLink(mcu.path, queue_size=8) as link,
        ):
            await wait_until(lambda: link.stats.queue_drops > 0)
            got = [await link.receive(1) for _ in range(8)]
            seqs = [b.seq for b in batches(got)]
            assert seqs == sorted(seqs)

    run(main())


def test_line_mode_link_reads_emulated_csv_and_json() -> None:
    async def main() -> None:
        for fmt in ("csv", "json"):
            cfg = EmulatorConfig(mode="line", line_format=fmt, rate_hz=500)
            async with McuEmulator(cfg) as mcu:
                link = SerialLink(mcu.path, mode="line", channel_map=cfg.channel_map())
                async with link:
                    got = batches(await collect(link, lambda r: len(batches(r)) >= 50))
                    parser = LineParser(cfg.channel_map())
                    sent = [parser.parse(line.decode()) for line in mcu.sent.values()]
                    sent_keys = {(s.t0, s.values) for s in sent}
                    for b in got:
                        assert b.channels == cfg.channel_names
                        assert (b.t0, b.values) in sent_keys
                    with pytest.raises(LinkError, match="framed"):
                        await link.send_command(Ping())

    run(main())


def test_line_mode_counts_garbage_lines() -> None:
    async def main() -> None:
        with raw_pty() as (master, path):
            async with SerialLink(path, mode="line", channels=("a", "b")) as link:
                # The port opens mid-line: "5,9" is the tail of a line and must not pass.
                os.write(master, b"5,9\n\x00\x13junk\n1,2\nnot,a number\n3,4,5\n6,7\n")
                got = batches(await collect(link, lambda r: len(batches(r)) >= 2))
                assert [b.values for b in got] == [((1.0, 2.0),), ((6.0, 7.0),)]
                assert link.stats.decoder.errors["bad-line"] == 3
                assert link.stats.decoder.errors["partial-line"] == 1

    run(main())


def test_line_mode_replug_drops_the_cut_line_instead_of_passing_a_wrong_sample(
    tmp_path: Path,
) -> None:
    port = tmp_path / "tty"

    def plug() -> tuple[int, int]:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.symlink(os.ttyname(slave), port)
        return master, slave

    async def main() -> None:
        master, slave = plug()
        link = SerialLink(str(port), mode="line", channels=("a", "b", "c"))
        link.reconnect_interval = 0.02
        async with link:
            os.write(master, b"\n0.5,0.6,0.7\n0.51,0.6")  # unplugged in the middle of a line
            first = batches(await collect(link, lambda r: len(batches(r)) >= 1))
            await asyncio.sleep(0.05)  # let the link take the half line into its buffer
            os.close(master)
            os.close(slave)
            port.unlink()
            await wait_until(lambda: not link.connected, what="the unplug to be seen")
            master, slave = plug()
            try:
                await link.wait_connected(10)
                # The replugged MCU goes on mid-line: "1,0.62,-1.25" parses, but is no sample.
                os.write(master, b"1,0.62,-1.25\n0.52,0.63,0.8\n")
                after = batches(await collect(link, lambda r: len(batches(r)) >= 1))
            finally:
                os.close(master)
                os.close(slave)
        assert [b.values for b in first + after] == [((0.5, 0.6, 0.7),), ((0.52, 0.63, 0.8),)]
        assert link.stats.connects == 2
        assert link.stats.decoder.errors["partial-line"] == 1

    run(main())


def test_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        SerialLink("/dev/null", mode="morse")  # type: ignore[arg-type]


def test_emulator_config_is_validated() -> None:
    with pytest.raises(ValueError, match="rate_hz"):
        EmulatorConfig(rate_hz=0)
    with pytest.raises(ValueError, match="channels \\* batch"):
        EmulatorConfig(channels=100, batch=100)
    with pytest.raises(ValueError, match="drop_prob"):
        EmulatorConfig(drop_prob=1.0)
