"""The emulator's sample-source hook: rows from any SampleSource reach the link as they were."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Sequence
from typing import Any

import pytest
from support.pty_tools import collect

from edgefleet.firmware_bridge import SampleSource
from edgefleet.firmware_bridge.emulator import EmulatorConfig, McuEmulator
from edgefleet.firmware_bridge.lines import LineDecoder
from edgefleet.firmware_bridge.link import SerialLink
from edgefleet.firmware_bridge.messages import SampleBatch


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


class Ramp:
    """Sample k is (k, -k, k / 2): every row tells where it belongs in the stream."""

    def __init__(self, channels: int = 3) -> None:
        self.channels = channels
        self.k = 0
        self.asked: list[int] = []

    def read(self, n: int) -> Sequence[Sequence[float]]:
        self.asked.append(n)
        rows = [[float(k), float(-k), k / 2][: self.channels] for k in range(self.k, self.k + n)]
        self.k += n
        return rows


def test_framed_batches_carry_the_sources_rows() -> None:
    ramp = Ramp()
    source: SampleSource = ramp  # the protocol is structural

    async def main() -> None:
        cfg = EmulatorConfig(rate_hz=500, channels=3, batch=5)
        async with McuEmulator(cfg, samples=source) as mcu, SerialLink(mcu.path) as link:
            got = [
                r
                for r in await collect(
                    link, lambda r: sum(isinstance(x, SampleBatch) for x in r) >= 10
                )
                if isinstance(r, SampleBatch)
            ]
            for b in got:
                first = b.values[0][0]
                assert first == int(first)
                k = int(first)
                assert [list(v) for v in b.values] == [
                    [float(i), float(-i), i / 2] for i in range(k, k + 5)
                ]
            # Consecutive batches continue the stream (the opening may cut the first one).
            starts = [int(b.values[0][0]) for b in got]
            assert all(b - a == 5 for a, b in itertools.pairwise(starts[1:]))
            assert set(ramp.asked) == {5}

    run(main())


def test_line_mode_prints_the_sources_rows() -> None:
    ramp = Ramp(channels=2)
    cfg = EmulatorConfig(rate_hz=200, channels=2, batch=4, mode="line")

    async def main() -> None:
        mcu = McuEmulator(cfg, samples=ramp)
        decoder = LineDecoder(cfg.channel_map(), at_line_start=True)  # mcu.sent holds whole lines
        async with mcu:
            await asyncio.sleep(0.3)
        lines = [mcu.sent[i] for i in sorted(mcu.sent)]
        msgs = [m for line in lines for m in decoder.feed(line)]
        values = [v for m in msgs if isinstance(m, SampleBatch) for v in m.values]
        assert len(values) >= 8
        assert [list(v) for v in values] == [[float(k), float(-k)] for k in range(len(values))]

    run(main())


def test_a_source_of_the_wrong_width_is_refused_with_a_clear_message() -> None:
    mcu = McuEmulator(EmulatorConfig(channels=3, batch=2), samples=Ramp(channels=2))
    with pytest.raises(ValueError, match=r"2 rows of \[2\] values for 2 rows of 3 values"):
        mcu._emit_batch()  # one batch, no pty needed
