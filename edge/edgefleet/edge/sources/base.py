"""The Source seam: timestamped chunks of multichannel samples."""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from edgefleet.protocol.messages import Scalar

Level = Literal["debug", "info", "warning", "error", "critical"]


class Chunk(NamedTuple):
    """``samples`` (n, channels) float32; ``t0`` the wall-clock time of the first sample."""

    t0: float
    samples: npt.NDArray[np.float32]


class Source(Protocol):
    """Where the agent's samples come from; ``read`` returns None at the end of the data."""

    channels: tuple[str, ...]
    rate_hz: float

    async def read(self) -> Chunk | None:
        """The next chunk, waiting for it as long as needed."""
        ...

    def close(self) -> None:
        """Release the device or file."""
        ...


class EventSink(Protocol):
    """Takes events a source reports (the agent's ``event``: kind, level, message, data)."""

    def __call__(
        self, kind: str, level: Level, message: str, data: dict[str, Scalar] | None = None
    ) -> None:
        """Queue one event."""
        ...


async def close_source(source: Source) -> None:
    """Close ``source``, awaiting its ``aclose`` where it has one (a serial link's port)."""
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()
    else:
        source.close()


def attach_reporter(source: Source, sink: EventSink) -> None:
    """Give ``source`` the agent's event sink if it reports events (``set_reporter``)."""
    set_reporter = getattr(source, "set_reporter", None)
    if set_reporter is not None:
        set_reporter(sink)
