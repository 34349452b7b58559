"""The simulator's sources (blocks of a seeded signal; start gate, phase, pacing, finish) and its
inline executor."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import pytest

from edgefleet.edge.sources.simulated import SimulatedSource
from edgefleet.signals import Drift, make_signal
from edgefleet.simulators.inline import LoopExecutor
from edgefleet.simulators.sources import BlockSource, BridgeSource, FleetSource


def _unpaced(rate_hz: float = 20.0, chunk: int = 2) -> BlockSource:
    return BlockSource("vibration", 3, rate_hz=rate_hz, chunk=chunk)


@pytest.mark.parametrize("signal", ["vibration", "activity"])
def test_blocks_give_the_samples_and_stamps_of_the_agents_source(signal: str) -> None:
    async def main() -> None:
        block = BlockSource(signal, 11, rate_hz=50.0, chunk=3, clock=lambda: 1000.0)
        ref = SimulatedSource(
            signal, 11, rate_hz=50.0, chunk=3, realtime=False, clock=lambda: 1000.0
        )
        for _ in range(40):  # several blocks of 30 samples
            a, b = await block.read(), await ref.read()
            assert b is not None
            assert a.t0 == pytest.approx(b.t0)
            np.testing.assert_allclose(a.samples, b.samples, rtol=1e-6, atol=1e-6)

    asyncio.run(main())


def test_stamps_follow_a_jump_of_the_device_clock() -> None:
    async def main() -> None:
        offset = [0.0]
        block = BlockSource(
            "vibration", 5, rate_hz=10.0, chunk=2, clock=lambda: time.time() + offset[0]
        )
        first = (await block.read()).t0
        stamps = [(await block.read()).t0 for _ in range(3)]
        # Unpaced reads a moment apart: stamps are one chunk period apart, whatever the host did.
        assert stamps == pytest.approx([first + 0.2, first + 0.4, first + 0.6])
        offset[0] = 3600.0  # the clock-skew event
        after = [(await block.read()).t0 for _ in range(2)]
        assert after == pytest.approx([first + 3600.8, first + 3601.0], abs=0.05)
        offset[0] = 3600.2  # under JUMP_S: scheduling noise, not a jump
        assert (await block.read()).t0 == pytest.approx(first + 3601.2, abs=0.05)

    asyncio.run(main())


def test_drift_applies_from_the_next_chunk() -> None:
    async def main() -> None:
        drifted, steady = _unpaced(chunk=1), _unpaced(chunk=1)
        for _ in range(3):
            np.testing.assert_array_equal(
                (await drifted.read()).samples, (await steady.read()).samples
            )
        drifted.set_drift(Drift("shift", 3.0))
        steady.set_drift(None)
        a, b = (await drifted.read()).samples, (await steady.read()).samples
        assert float(np.abs(a - b).max()) > 0.1

    asyncio.run(main())


def test_reads_wait_for_the_start_then_are_paced() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = asyncio.Event()
        src = FleetSource(_unpaced(), paced_chunk=2, start=start, phase_s=0.05)
        first = asyncio.ensure_future(src.read())
        await asyncio.sleep(0.1)
        assert not first.done()  # no reading before the run's go
        go = loop.time()
        start.set()
        chunk = await first
        assert chunk is not None
        assert chunk.samples.shape == (2, 3)
        # Handed over once its last sample was taken: phase + 2 samples at 20 Hz.
        assert loop.time() - go >= 0.05 + 2 / 20 - 0.005
        second = await src.read()
        assert second is not None
        assert loop.time() - go >= 0.05 + 4 / 20 - 0.005
        # Consecutive chunks are stamped one chunk period apart.
        assert second.t0 - chunk.t0 == pytest.approx(2 / 20)
        assert src.chunks == 2

    asyncio.run(main())


def test_finish_wakes_a_waiting_read_and_ends_the_stream() -> None:
    async def main() -> None:
        src = FleetSource(_unpaced(rate_hz=0.5, chunk=1), paced_chunk=1)
        pending = asyncio.ensure_future(src.read())
        await asyncio.sleep(0.05)
        assert not pending.done()  # the first chunk is due in two seconds
        src.finish()
        assert await asyncio.wait_for(pending, 1.0) is None
        assert await src.read() is None
        assert src.chunks == 0

    asyncio.run(main())


def test_finish_before_the_start_ends_the_stream() -> None:
    async def main() -> None:
        src = FleetSource(_unpaced(), paced_chunk=2, start=asyncio.Event())
        pending = asyncio.ensure_future(src.read())
        await asyncio.sleep(0.02)
        src.finish()
        assert await asyncio.wait_for(pending, 1.0) is None

    asyncio.run(main())


def test_a_cancelled_read_leaves_no_timer_waiting() -> None:
    async def main() -> None:
        src = FleetSource(_unpaced(rate_hz=0.5, chunk=1), paced_chunk=1)
        pending = asyncio.ensure_future(src.read())
        await asyncio.sleep(0.02)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        src.finish()  # nothing left to wake
        assert await src.read() is None

    asyncio.run(main())


def test_loop_executor_runs_on_the_loop_thread_and_passes_errors() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ex = LoopExecutor()
        assert await loop.run_in_executor(ex, threading.get_ident) == threading.get_ident()

        def boom() -> None:
            raise ValueError("disk on fire")

        with pytest.raises(ValueError, match="disk on fire"):
            await loop.run_in_executor(ex, boom)
        assert ex.calls == 2

    asyncio.run(main())


def test_loop_executor_outside_a_loop_gives_a_concurrent_future() -> None:
    fut = LoopExecutor().submit(sum, [1, 2, 3])
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=0) == 6


def test_a_serial_device_reads_the_fleets_signal_through_the_bridge_and_drifts() -> None:
    async def main() -> None:
        src = await BridgeSource(21, rate_hz=200.0, chunk=20, signal="vibration").start()
        ref = make_signal("vibration", 21, rate_hz=200.0, variation=1.0)
        try:
            assert src.channels == ("ax", "ay", "az")
            first = await asyncio.wait_for(src.read(), 10)
            # The link may join mid-stream: find the chunk's place in the reference signal.
            expected = ref.read(2000)
            row = first.samples[0]
            at = int(np.argmin(np.abs(expected - row).sum(axis=1)))
            np.testing.assert_allclose(first.samples, expected[at : at + 20], atol=1e-4)
            src.set_drift(Drift("shift", 5.0))
            for _ in range(3):  # past the batches drawn before the drift
                drifted = await asyncio.wait_for(src.read(), 10)
            assert float(np.abs(drifted.samples - expected.mean(axis=0)).mean()) > 0.3
        finally:
            src.close()
            await asyncio.sleep(0.05)

    asyncio.run(main())
