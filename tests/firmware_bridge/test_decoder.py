"""The stream decoder: garbage, cuts, truncation, flipped bits, resync, bounded memory, seq gaps."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.firmware_bridge.decoder import FrameDecoder
from edgefleet.firmware_bridge.errors import FrameError
from edgefleet.firmware_bridge.frames import MAX_ENCODED_LENGTH, encode_frame
from edgefleet.firmware_bridge.messages import LogLine, Message, SampleBatch, Status


def batch(i: int, width: int = 2, rows: int = 3) -> SampleBatch:
    values = tuple(tuple(float(i * 100 + r * 10 + c) for c in range(width)) for r in range(rows))
    return SampleBatch(i / 10, 0.01, values)


def stream(n: int, start: int = 0) -> tuple[list[bytes], list[SampleBatch]]:
    """``n`` encoded sample frames with seq ``start``...; and the batches they carry."""
    sent = [batch(i) for i in range(start, start + n)]
    return [encode_frame(b, i) for i, b in enumerate(sent, start)], sent


def key(msg: Message) -> tuple[object, ...]:
    """What must survive the trip: seq, time and values of a batch (or the message itself)."""
    if isinstance(msg, SampleBatch):
        return (msg.seq, msg.t0, msg.period, msg.values)
    return (msg,)


def expected(sent: list[SampleBatch], start: int = 0) -> list[tuple[object, ...]]:
    return [(i, b.t0, b.period, b.values) for i, b in enumerate(sent, start)]


def feed_chunks(dec: FrameDecoder, data: bytes, cuts: list[int]) -> list[Message]:
    out: list[Message] = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        out += dec.feed(data[prev:cut])
        prev = cut
    return out


def test_frames_decode_with_names_seq_and_receive_time() -> None:
    wires, sent = stream(3)
    dec = FrameDecoder(("x", "y"), clock=lambda: 123.0)
    got = dec.feed(b"".join(wires))
    assert [key(m) for m in got] == expected(sent)
    assert all(isinstance(m, SampleBatch) and m.channels == ("x", "y") for m in got)
    assert all(isinstance(m, SampleBatch) and m.received_at == 123.0 for m in got)
    assert dec.stats.messages == 3
    assert dec.stats.error_total == 0


def test_channel_names_fall_back_when_the_count_differs() -> None:
    dec = FrameDecoder(("only-one",))
    (got,) = dec.feed(encode_frame(batch(0, width=3), 0))
    assert isinstance(got, SampleBatch)
    assert got.channels == ("ch0", "ch1", "ch2")


def test_stream_cut_at_every_byte_position() -> None:
    wires, sent = stream(3)
    data = b"".join(wires)
    for cut in range(len(data) + 1):
        dec = FrameDecoder()
        got = feed_chunks(dec, data, [cut])
        assert [key(m) for m in got] == expected(sent), f"cut at {cut}"
        assert dec.stats.error_total == 0


def test_stream_starting_and_ending_at_every_offset_gives_exactly_the_intact_frames() -> None:
    # Frames of different lengths and types, so no cut lines up with a pattern by chance.
    msgs: list[Message] = [batch(0, rows=1), Status(7, 100.0), batch(1, rows=3), LogLine(1, "ok")]
    msgs.append(batch(2, width=3, rows=2))
    wires = [encode_frame(m, i) for i, m in enumerate(msgs)]
    want = [
        key(m if not isinstance(m, SampleBatch) else replace(m, seq=i)) for i, m in enumerate(msgs)
    ]
    data = b"".join(wires)
    ends = list(itertools.accumulate(len(w) for w in wires))
    starts = [0, *ends[:-1]]
    for a in range(len(data) + 1):
        for b in range(a, len(data) + 1):
            dec = FrameDecoder()
            got = [key(m) for m in dec.feed(data[a:b])]
            # Whole frames inside the slice come out intact; a cut one never does.
            whole = [i for i in range(len(wires)) if a <= starts[i] and ends[i] <= b]
            assert got == [want[i] for i in whole], f"data[{a}:{b}]"
            # The head cut off a frame's start: dropped, counted (unless only its 0x00 is left).
            head = next((i for i in range(len(wires)) if starts[i] < a < ends[i] - 1), None)
            head_counted = head is not None and (ends[head] <= b)
            assert dec.stats.error_total == int(head_counted), f"data[{a}:{b}]"
            assert dec.stats.lost_frames == 0
            # What the tail holds is waiting for its 0x00, bounded by one frame.
            last_end = max([a, *(e for e in ends if a <= e <= b)])
            assert dec.buffered == b - last_end, f"data[{a}:{b}]"
            # The cut tail, once a delimiter comes, is either the intact frame (only its own
            # 0x00 was missing) or an error: never a corrupt message.
            tail = dec.feed(b"\x00")
            complete = [i for i in range(len(wires)) if a <= starts[i] and ends[i] - 1 == b]
            assert [key(m) for m in tail] == [want[i] for i in complete], f"data[{a}:{b}] + 00"
            tail_bad = b > last_end and not complete
            assert dec.stats.error_total == head_counted + tail_bad, f"data[{a}:{b}] + 00"


def test_stream_fed_one_byte_at_a_time() -> None:
    wires, sent = stream(4)
    data = b"".join(wires)
    dec = FrameDecoder()
    got = feed_chunks(dec, data, list(range(len(data))))
    assert [key(m) for m in got] == expected(sent)


@given(st.integers(1, 6), st.lists(st.integers(0, 10_000), max_size=20))
def test_any_chunking_gives_the_same_frames(n: int, cuts: list[int]) -> None:
    wires, sent = stream(n)
    data = b"".join(wires)
    got = feed_chunks(FrameDecoder(), data, [c % (len(data) + 1) for c in cuts])
    assert [key(m) for m in got] == expected(sent)


@given(st.binary(max_size=2000), st.integers(2, 6))
def test_garbage_then_resync_within_one_frame(garbage: bytes, n: int) -> None:
    wires, sent = stream(n)
    dec = FrameDecoder()
    got = [key(m) for m in dec.feed(garbage + b"".join(wires))]
    want = expected(sent)
    # Garbage may swallow the first frame, never a later one; nothing corrupt comes out.
    assert got in (want, want[1:])
    if got == want[1:]:
        assert dec.stats.error_total >= 1
    assert dec.buffered == 0


@given(st.integers(3, 6), st.data())
def test_truncated_frame_is_dropped_and_counted_lost(n: int, data: st.DataObject) -> None:
    wires, sent = stream(n)
    victim = data.draw(st.integers(1, n - 2))
    keep = data.draw(st.integers(0, len(wires[victim]) - 2))
    wires[victim] = wires[victim][:keep] + b"\x00"
    dec = FrameDecoder()
    got = [key(m) for m in dec.feed(b"".join(wires))]
    want = expected(sent)
    assert got == want[:victim] + want[victim + 1 :]
    assert dec.stats.lost_frames == 1
    assert dec.stats.error_total == (1 if keep else 0)


@settings(max_examples=300)
@given(st.integers(2, 5), st.data())
def test_no_corrupt_frame_is_accepted_after_bit_flips(n: int, data: st.DataObject) -> None:
    wires, sent = stream(n)
    buf = bytearray(b"".join(wires))
    flips = data.draw(
        st.lists(st.integers(0, len(buf) * 8 - 1), min_size=1, max_size=4, unique=True)
    )
    for bit in flips:
        buf[bit // 8] ^= 1 << (bit % 8)
    dec = FrameDecoder()
    got = [key(m) for m in dec.feed(bytes(buf))]
    want = expected(sent)
    assert set(got) <= set(want)
    assert got == sorted(got)
    # Each flip ruins at most the two frames around it (it may hit a delimiter).
    assert len(got) >= n - 2 * len(flips)
    # A flip is seen as an error, or it hit the last delimiter and the frame is still pending.
    assert dec.stats.error_total >= 1 or dec.buffered > 0


def test_random_noise_never_raises_and_memory_stays_bounded() -> None:
    rng = random.Random(7)
    dec = FrameDecoder()
    for _ in range(200):
        dec.feed(rng.randbytes(rng.randint(0, 3000)))
        assert dec.buffered <= MAX_ENCODED_LENGTH


def test_endless_frame_is_dropped_as_too_long_then_resyncs() -> None:
    wires, sent = stream(2)
    dec = FrameDecoder()
    for _ in range(100):
        dec.feed(b"\x55" * 1000)
        assert dec.buffered <= MAX_ENCODED_LENGTH
    got = dec.feed(b"\x00" + b"".join(wires))
    assert [key(m) for m in got] == expected(sent)
    assert dec.stats.errors["too-long"] == 1


def test_errors_are_typed_counted_by_reason_and_reported() -> None:
    seen: list[FrameError] = []
    dec = FrameDecoder(on_error=seen.append)
    good = encode_frame(Status(1, 10.0), 0)
    dec.feed(b"\x05\x01\x00" + good[:-2] + b"\x77\x00" + good)
    assert dec.stats.errors == {"bad-cobs": 1, "crc-mismatch": 1}
    assert [e.reason for e in seen] == ["bad-cobs", "crc-mismatch"]
    assert dec.stats.snapshot()["error.crc-mismatch"] == 1
    assert dec.stats.messages == 1


def test_sequence_gaps_wraps_and_resets() -> None:
    msg = LogLine(0, "x")
    dec = FrameDecoder()
    for seq in (0, 1, 5, 6):
        dec.feed(encode_frame(msg, seq))
    assert dec.stats.lost_frames == 3
    wrap = FrameDecoder()
    for seq in (65534, 65535, 0, 1, 3):
        wrap.feed(encode_frame(msg, seq))
    assert (wrap.stats.lost_frames, wrap.stats.seq_resets) == (1, 0)
    wrap.feed(encode_frame(msg, 0))  # a reboot: seq starts over, which is not loss
    assert (wrap.stats.lost_frames, wrap.stats.seq_resets) == (1, 1)


def test_reset_drops_the_partial_frame_but_keeps_loss_accounting() -> None:
    wires, _ = stream(3)
    dec = FrameDecoder()
    dec.feed(wires[0] + wires[1][:5])
    dec.reset()
    assert dec.buffered == 0
    got = dec.feed(b"\x00" + wires[2])
    assert [m.seq for m in got if isinstance(m, SampleBatch)] == [2]
    assert dec.stats.lost_frames == 1
