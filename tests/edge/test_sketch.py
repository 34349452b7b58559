"""Drift sketches: the batched, all-channel counting equals numpy's per-channel histogram."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edgefleet.edge.sketch import SketchAccumulator, uniform_counts

EDGES = np.stack([np.linspace(-4.0, 4.0, 11), np.linspace(0.5, 1.5, 11)])


def _reference(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.stack(
        [np.histogram(np.clip(x[:, j], e[0], e[-1]), bins=e)[0] for j, e in enumerate(edges)]
    )


values = st.floats(-1e3, 1e3, allow_nan=False, width=32) | st.sampled_from(
    [-4.0, 4.0, 0.5, 1.5, 0.8, -0.8, 1.1, np.inf, -np.inf]  # on edges, and beyond them
)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(0, 300), st.just(2)), elements=values))
def test_uniform_counts_equal_numpys_histogram(x):
    np.testing.assert_array_equal(uniform_counts(x, EDGES), _reference(x, EDGES))


def test_nan_counts_nowhere_and_values_beyond_the_edges_land_in_the_end_bins():
    x = np.array([[np.nan, 1.0], [-9.0, np.nan], [9.0, 9.0]])
    counts = uniform_counts(x, EDGES)
    assert counts.sum(axis=1).tolist() == [2, 2]
    assert (counts[0, 0], counts[0, -1]) == (1, 1)  # -9 and 9 on edges -4..4
    assert (counts[1, 5], counts[1, -1]) == (1, 1)  # 1.0 in [1.0, 1.1), 9 beyond 1.5


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 700), min_size=1, max_size=12),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_chunks_across_the_buffer_give_the_statistics_of_all_the_data(sizes, seed, fixed):
    rng = np.random.default_rng(seed)
    chunks = [rng.normal(size=(n, 2)).astype(np.float32) for n in sizes]
    acc = SketchAccumulator(["a", "b"], edges=list(EDGES) if fixed else None, buffer=256)
    for c in chunks:
        acc.add_inputs(c)
    scores = rng.uniform(size=sum(sizes) // 10).tolist()
    acc.add_scores(scores)
    out = {f.name: f for f in acc.take()}
    data = np.concatenate(chunks).astype(np.float64)
    if not len(data):
        assert out == {} if not scores else set(out) == {"score"}
        return
    for j, name in enumerate(["a", "b"]):
        f = out[name]
        assert f.count == len(data)
        assert f.mean == pytest.approx(data[:, j].mean(), abs=1e-9)
        assert f.std == pytest.approx(data[:, j].std(), abs=1e-6)
        assert (f.min, f.max) == (data[:, j].min(), data[:, j].max())
        edges = np.asarray(f.bin_edges)
        if fixed:
            np.testing.assert_array_equal(edges, EDGES[j])
        assert f.counts == _reference(data[:, [j]], edges[None, :])[0].tolist()
    if scores:
        assert out["score"].counts == np.histogram(scores, np.linspace(0, 1, 11))[0].tolist()
    # A take starts a new window.
    assert acc.take() == []
