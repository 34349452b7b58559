"""Coverage-guided fuzzing of the serial frame and line decoders (atheris / libFuzzer).

Run: ``.venv/bin/python tests/fuzz/fuzz_bridge_decoder.py -max_total_time=60`` (any libFuzzer flag
works, e.g. ``-runs=100000`` or a corpus directory). A crash is a bug: the decoders must turn any
bytes into frames or counted errors, never raise anything else, never hold more than their
maximum frame or line, and never accept a frame that does not re-encode to its own bytes.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from edgefleet.firmware_bridge.decoder import FrameDecoder
    from edgefleet.firmware_bridge.errors import FrameError
    from edgefleet.firmware_bridge.frames import (
        MAX_ENCODED_LENGTH,
        decode_frame,
        encode_frame,
    )
    from edgefleet.firmware_bridge.lines import MAX_LINE_LENGTH, ChannelMap, LineDecoder

_LINE_MAP = ChannelMap(channels=("a", "b"), time_key="t")


def test_one_input(data: bytes) -> None:
    """One fuzz case: the first byte picks chunk sizes and line sync for the rest."""
    if not data:
        return
    step = data[0] % 64 + 1
    body = data[1:]
    frames = FrameDecoder()
    # Bit 7: parse from the first byte, or skip the (partial) first line as after opening.
    lines = LineDecoder(_LINE_MAP, at_line_start=bool(data[0] & 0x80))
    for start in range(0, len(body), step):
        chunk = body[start : start + step]
        for frame in frames.feed_frames(chunk):
            # Only an intact frame comes out, and it round-trips byte for byte.
            again = decode_frame(encode_frame(frame.message, frame.seq)[:-1])
            # (A message holding a NaN float is unequal to itself; its repr still matches.)
            assert again.seq == frame.seq
            assert repr(again.message) == repr(frame.message)
        lines.feed(chunk)
        assert frames.buffered <= MAX_ENCODED_LENGTH
        assert lines.buffered <= MAX_LINE_LENGTH
    with contextlib.suppress(FrameError):  # anything else escaping is a finding
        decode_frame(body)


def main() -> None:
    """Run libFuzzer with the command line's flags."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
