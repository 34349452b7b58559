"""Windowing and preprocessing across chunk boundaries, compatibility checks, file sources."""

from __future__ import annotations

import asyncio
import json

import msgspec
import numpy as np
import pytest
from support.tiny_models import MEAN, STD, make_bundle

from edgefleet.edge.errors import Incompatible, SourceError
from edgefleet.edge.pipeline import Pipeline, check_compatible
from edgefleet.edge.runtime import load_runtime
from edgefleet.edge.sources.replay import ReplaySource
from edgefleet.edge.sources.simulated import SimulatedSource
from edgefleet.protocol.manifest import Preprocessing


@pytest.fixture(scope="module")
def bundle(tiny_zoo, signing_key, tmp_path_factory):
    return make_bundle(tiny_zoo, tmp_path_factory.mktemp("p") / "b", signing_key, fmt="float")


def test_chunking_does_not_change_results(bundle):
    data = SimulatedSource(seed=5, realtime=False)._signal.read(32 * 10)
    rt = load_runtime(bundle.path, bundle.manifest)
    whole = Pipeline(rt, bundle.manifest, ("ax", "ay", "az")).process(0.0, data, 400.0)
    split = Pipeline(rt, bundle.manifest, ("ax", "ay", "az"))
    parts = []
    for a, b in ((0, 7), (7, 100), (100, 101), (101, 320)):
        parts += split.process(a / 400.0, data[a:b], 400.0)
    assert len(whole) == len(parts) == 10
    for w, p in zip(whole, parts, strict=True):
        assert w.label == p.label
        assert w.t == pytest.approx(p.t)
        np.testing.assert_allclose(w.outputs, p.outputs, atol=1e-6)
    # the model sees standardised windows
    x = (data[:32] - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    np.testing.assert_allclose(
        whole[0].outputs, rt.run(x.reshape(1, 32, 3).astype(np.float32))[0], atol=1e-6
    )
    assert whole[0].label in ("normal", "fault")
    sketch = split.sketch.take()
    assert [f.name for f in sketch] == ["ax", "ay", "az", "score"]
    assert sketch[0].count == 320
    assert sum(sketch[0].counts) == 320


def test_channel_reordering_selects_by_name(bundle):
    data = SimulatedSource(seed=5, realtime=False)._signal.read(32)
    rt = load_runtime(bundle.path, bundle.manifest)
    a = Pipeline(rt, bundle.manifest, ("ax", "ay", "az")).process(0.0, data, 400.0)
    b = Pipeline(rt, bundle.manifest, ("az", "extra", "ax", "ay")).process(
        0.0, np.stack([data[:, 2], data[:, 0] * 0, data[:, 0], data[:, 1]], axis=1), 400.0
    )
    np.testing.assert_allclose(a[0].outputs, b[0].outputs, atol=1e-6)


def test_incompatible_bundles_are_explained(bundle):
    m = bundle.manifest
    with pytest.raises(Incompatible, match="channels"):
        check_compatible(m, ("x", "y"))
    bad = msgspec.structs.replace(
        m, preprocessing=msgspec.structs.replace(m.preprocessing, window=16)
    )
    with pytest.raises(Incompatible, match="shape"):
        check_compatible(bad, ("ax", "ay", "az"))
    flat = msgspec.structs.replace(
        m, preprocessing=Preprocessing(kind="flatten", channels=["ax", "ay", "az"], window=32)
    )
    with pytest.raises(Incompatible, match=r"\[-1, 96\]"):
        check_compatible(flat, ("ax", "ay", "az"))


def test_replay_csv_and_json(tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("t,ax,ay\n0.0,1,2\n0.1,3,4\n\n# note\n0.2,5,6\n")
    src = ReplaySource(csv, chunk=2)
    assert src.channels == ("ax", "ay")
    c1 = asyncio.run(src.read())
    assert c1 is not None
    assert c1.samples.tolist() == [[1, 2], [3, 4]]
    jl = tmp_path / "s.jsonl"
    jl.write_text("\n".join(json.dumps({"t": i, "a": i, "b": -i}) for i in range(5)))
    src2 = ReplaySource(jl, fmt="json", channels=["a", "b"], chunk=10)
    chunk = asyncio.run(src2.read())
    assert chunk is not None
    assert chunk.samples.shape == (5, 2)
    assert asyncio.run(src2.read()) is None


@pytest.mark.parametrize(
    ("text", "fmt", "match"),
    [
        ("a,b\n1,x\n", "csv", "not numbers"),
        ("a,b\n1,2,3,4\n", "csv", "expected 2 channels"),
        ('{"a": 1}\n', "json", "bad JSON sample"),
        ("", "csv", "name the channels"),
    ],
)
def test_bad_replay_files_are_typed_errors(tmp_path, text, fmt, match):
    p = tmp_path / "bad"
    p.write_text(text)
    with pytest.raises(SourceError, match=match):
        ReplaySource(p, fmt=fmt, channels=["a", "b"] if fmt == "json" else ())


def test_serial_source_needs_channels():
    from edgefleet.edge.sources.serial import SerialSource

    with pytest.raises(SourceError, match=r"source\.channels"):
        SerialSource("loop://", channels=[])
