"""Fast checks of the zoo's pieces that need no TensorFlow: registry, windows, data, parity."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.models.errors import ParityFailed, UnknownModel
from edgefleet.models.parity import check_parity
from edgefleet.models.windows import channel_stats, pure_windows, sliding_windows, standardize
from edgefleet.models.zoo import ZOO, get_model, model_names


def test_registry_lists_three_models_and_refuses_unknown_names() -> None:
    assert model_names() == ["activity", "digits", "vibration-anomaly"]
    for name in ZOO:
        spec = get_model(name)
        assert spec.name == name
        assert spec.task in ("classify", "anomaly")
    with pytest.raises(UnknownModel, match="activity, digits, vibration-anomaly"):
        get_model("resnet")


def test_package_imports_without_tensorflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys, edgefleet.models, edgefleet.models.zoo, edgefleet.models.cli, "
        "edgefleet.models.bundler; assert 'tensorflow' not in sys.modules; "
        "assert 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_sliding_windows_match_the_agents_framing() -> None:
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    w = sliding_windows(x, 4, 2)
    assert w.shape == (4, 4, 3)
    np.testing.assert_array_equal(w[1], x[2:6])
    assert sliding_windows(x[:3], 4, 2).shape == (0, 4, 3)
    with pytest.raises(ValueError, match="positive"):
        sliding_windows(x, 0, 1)


def test_pure_windows_drop_segment_edges() -> None:
    x = np.zeros((12, 3), np.float32)
    labels = np.array([0] * 6 + [1] * 6)
    w, y = pure_windows(x, labels, 4, 2)
    assert y.tolist() == [0, 0, 1, 1]
    assert len(w) == 4


def test_standardize_uses_per_channel_stats() -> None:
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(50, 8, 3)) * [1, 2, 3] + [0, 1, 5]).astype(np.float32)
    mean, std = channel_stats(w)
    z = standardize(w, mean, std).reshape(-1, 3)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-4)


@pytest.mark.parametrize("name", ["activity", "vibration-anomaly", "digits"])
def test_datasets_are_seeded_and_shaped_for_the_manifest(name: str) -> None:
    spec = get_model(name)
    a, b = spec.dataset(1, small=True), spec.dataset(1, small=True)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, spec.dataset(2, small=True).x_test)
    pre = a.preprocessing
    if pre.kind == "window":
        assert a.x_test.shape[1:] == (pre.window, len(pre.channels))
    elif pre.kind == "flatten":
        assert a.x_test.shape[1:] == (pre.window * len(pre.channels),)
    else:
        assert a.x_test.shape[1:] == (64,)
    assert a.x_test.dtype == np.float32
    if spec.task == "classify":
        assert set(np.unique(a.y_test)) == set(range(len(spec.labels)))
    else:
        assert set(np.unique(a.y_test)) == {0, 1}


def test_parity_bars() -> None:
    ref = np.eye(4, dtype=np.float32)[np.arange(200) % 4]
    out = ref.copy()
    out[:3] = np.roll(out[:3], 1, axis=1)
    assert check_parity("classify", ref, out).value == pytest.approx(197 / 200)
    out[:5] = np.roll(ref[:5], 1, axis=1)
    with pytest.raises(ParityFailed, match=r"below the bar 0\.99"):
        check_parity("classify", ref, out).require("x")
    scores = np.linspace(0, 1, 100, dtype=np.float32)[:, None]
    assert check_parity("anomaly", scores, scores + 0.01).passed
    assert not check_parity("anomaly", scores, scores[::-1]).passed
    with pytest.raises(ParityFailed, match="shape"):
        check_parity("anomaly", scores, scores[:50])
