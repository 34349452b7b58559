"""Line mode: CSV and JSON lines through a channel map; malformed lines counted, never raised."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.firmware_bridge.errors import MalformedLine, PartialLine
from edgefleet.firmware_bridge.lines import MAX_LINE_LENGTH, ChannelMap, LineDecoder, LineParser
from edgefleet.firmware_bridge.messages import Message, SampleBatch
from edgefleet.protocol.errors import EdgefleetError


def clock() -> float:
    return 1000.0


def test_csv_with_time_column_and_named_channels() -> None:
    cmap = ChannelMap(
        channels=("ax", "az"), columns=("t", "ax", "ay", "az"), time_key="t", time_scale=1e-3
    )
    parser = LineParser(cmap, clock)
    got = parser.parse("1500, 0.5, 0.6, -1.25\r")
    assert got == SampleBatch(1.5, 0.0, ((0.5, -1.25),), ("ax", "az"), 0, 1000.0)


def test_csv_without_a_map_names_every_column() -> None:
    got = LineParser(ChannelMap(), clock).parse("1,2,3")
    assert got.channels == ("ch0", "ch1", "ch2")
    assert got.values == ((1.0, 2.0, 3.0),)
    assert got.t0 == 1000.0  # no time column: the host clock stamps the line


def test_json_lines_pick_keys_in_map_order() -> None:
    parser = LineParser(ChannelMap(channels=("b", "a"), time_key="ms", time_scale=1e-3), clock)
    got = parser.parse('{"a": 1, "b": 2.5, "ms": 2000, "note": "x"}')
    assert got.channels == ("b", "a")
    assert got.values == ((2.5, 1.0),)
    assert got.t0 == 2.0


def test_json_without_a_map_takes_every_key_but_time() -> None:
    got = LineParser(ChannelMap(time_key="t"), clock).parse('{"t": 1, "x": 2, "y": 3}')
    assert got.channels == ("x", "y")


@pytest.mark.parametrize(
    ("cmap", "line"),
    [
        (ChannelMap(channels=("a", "b")), "1,2,3"),
        (ChannelMap(channels=("a",)), "abc"),
        (ChannelMap(channels=("a",)), "nan"),
        (ChannelMap(channels=("a",)), "inf"),
        (ChannelMap(format="json"), "{not json"),
        (ChannelMap(format="json"), "[1, 2]"),
        (ChannelMap(channels=("a",)), '{"b": 1}'),
        (ChannelMap(channels=("a",)), '{"a": true}'),
        (ChannelMap(channels=("a",)), '{"a": [1]}'),
        (ChannelMap(channels=("a",), time_key="t"), '{"a": 1}'),
        (ChannelMap(format="json"), "{}"),
        (ChannelMap(channels=("a",), columns=("t", "a"), time_key="t"), "-5,1"),
        (ChannelMap(), "   "),
    ],
)
def test_malformed_lines_raise_a_typed_error(cmap: ChannelMap, line: str) -> None:
    with pytest.raises(MalformedLine) as info:
        LineParser(cmap, clock).parse(line)
    assert isinstance(info.value, EdgefleetError)
    assert info.value.reason == "bad-line"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"format": "xml"}, "line format"),
        ({"channels": ("a", "a")}, "unique"),
        ({"channels": ("a",), "columns": ("b",)}, "not among"),
        ({"columns": ("a",), "time_key": "t"}, "time_key"),
        ({"time_scale": 0}, "time_scale"),
        ({"delimiter": ";;"}, "delimiter"),
    ],
)
def test_bad_channel_maps_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ChannelMap(**kwargs)  # type: ignore[arg-type]


def test_channel_map_from_a_cli_spec() -> None:
    assert ChannelMap.parse(" ax, ay ,,az").channels == ("ax", "ay", "az")


def test_decoder_counts_bad_lines_and_goes_on() -> None:
    errors: list[MalformedLine] = []
    dec = LineDecoder(
        ChannelMap(channels=("a", "b")), clock=clock, on_error=errors.append, at_line_start=True
    )
    got = dec.feed(b"1,2\nbad\n\xff\xfe,1\n3,4\n\n")
    assert [m.values for m in got if isinstance(m, SampleBatch)] == [((1.0, 2.0),), ((3.0, 4.0),)]
    assert [m.seq for m in got if isinstance(m, SampleBatch)] == [0, 1]
    assert dec.stats.errors["bad-line"] == 2
    assert len(errors) == 2
    assert dec.stats.messages == 2


def test_line_split_across_feeds_and_overlong_lines_are_bounded() -> None:
    dec = LineDecoder(ChannelMap(channels=("a",)), at_line_start=True)
    assert dec.feed(b"1") == []
    assert [m.values for m in dec.feed(b"2\n") if isinstance(m, SampleBatch)] == [((12.0,),)]
    for _ in range(10):
        dec.feed(b"9" * 1000)
        assert dec.buffered <= MAX_LINE_LENGTH
    got = dec.feed(b"\n5\n")
    assert [m.values for m in got if isinstance(m, SampleBatch)] == [((5.0,),)]
    assert dec.stats.errors["bad-line"] == 1


@given(st.binary(max_size=3000))
def test_line_decoder_never_raises_on_noise(noise: bytes) -> None:
    dec = LineDecoder(ChannelMap(channels=("a", "b")))
    dec.feed(noise)
    assert dec.buffered <= MAX_LINE_LENGTH


@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)), max_size=30))
def test_csv_round_trip(rows: list[tuple[float, float]]) -> None:
    text = "".join(f"{a!r},{b!r}\n" for a, b in rows).encode()
    dec = LineDecoder(ChannelMap(channels=("a", "b")), at_line_start=True)
    got = dec.feed(text)
    assert [m.values[0] for m in got if isinstance(m, SampleBatch)] == rows


CMAP3 = ChannelMap(channels=("a", "b", "c"))


def values(msgs: list[Message]) -> list[tuple[tuple[float, ...], ...]]:
    return [m.values for m in msgs if isinstance(m, SampleBatch)]


def test_reset_drops_the_partial_line_that_follows_a_reconnect() -> None:
    errors: list[MalformedLine] = []
    dec = LineDecoder(CMAP3, at_line_start=True, on_error=errors.append)
    assert dec.feed(b"0.51,0.6") == []
    dec.reset()
    # The tail of a line printed while unplugged parses as a (wrong) sample: it must not pass.
    assert dec.feed(b"1,0.62,-1.25\n") == []
    assert values(dec.feed(b"0.52,0.63,-1.5\n")) == [((0.52, 0.63, -1.5),)]
    assert dec.stats.errors["partial-line"] == 1
    assert [type(e) for e in errors] == [PartialLine]
    assert isinstance(errors[0], MalformedLine)


def test_a_fresh_decoder_joining_mid_line_skips_to_the_next_newline() -> None:
    dec = LineDecoder(CMAP3)
    got: list[Message] = []
    for piece in (b"1,0.6", b"2,-1.25", b"\n0.5,0.6,0.7\n"):  # the cut line spans feeds
        got += dec.feed(piece)
    assert values(got) == [((0.5, 0.6, 0.7),)]
    assert dec.stats.errors == {"partial-line": 1}
    assert dec.buffered == 0


def test_skipping_a_partial_line_is_bounded_and_a_blank_start_is_no_error() -> None:
    dec = LineDecoder(CMAP3)
    for _ in range(10):
        assert dec.feed(b"9" * 1000) == []
        assert dec.buffered == 0  # skipped bytes are never held
    assert values(dec.feed(b"\n1,2,3\n")) == [((1.0, 2.0, 3.0),)]
    dec.reset()
    assert values(dec.feed(b"\r\n4,5,6\n")) == [((4.0, 5.0, 6.0),)]
    assert dec.stats.errors == {"partial-line": 1}
