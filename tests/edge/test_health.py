"""Health probes against a fake sysfs tree: thermal zones and the Pi's throttling mask."""

from __future__ import annotations

import shutil

import pytest

from edgefleet.edge.health import LatencyWindow, temperature_c, throttled


def test_temperature_reads_the_first_thermal_zone(tmp_path):
    for zone, milli in (("thermal_zone1", "71000"), ("thermal_zone0", "48312")):
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "temp").write_text(milli + "\n")
    (tmp_path / "cooling_device0").mkdir()
    assert temperature_c(tmp_path) == pytest.approx(48.312)


def test_temperature_is_none_without_zones_or_with_garbage(tmp_path):
    assert temperature_c(tmp_path) is None
    assert temperature_c(tmp_path / "missing") is None
    (tmp_path / "thermal_zone0").mkdir()
    (tmp_path / "thermal_zone0" / "temp").write_text("n/a\n")
    assert temperature_c(tmp_path) is None


def test_throttled_parses_the_firmware_mask(tmp_path):
    f = tmp_path / "get_throttled"
    # under-voltage now (bit 0) and since boot (bit 16), throttled since boot (bit 18)
    f.write_text("50005\n")
    assert throttled(f) == 0x50005
    f.write_text("0\n")
    assert throttled(f) == 0


@pytest.mark.skipif(shutil.which("vcgencmd") is not None, reason="vcgencmd answers instead")
def test_throttled_is_none_where_nothing_exposes_it(tmp_path):
    assert throttled(tmp_path / "missing") is None
    (tmp_path / "bad").write_text("zz\n")
    assert throttled(tmp_path / "bad") is None


def test_latency_percentiles_over_the_ring():
    w = LatencyWindow(size=100)
    assert w.percentiles() is None
    w.add(float(v) for v in range(1000))  # only the last 100 (900..999) are kept
    p50, p95, p99 = w.percentiles()  # type: ignore[misc]
    assert (p50, p95, p99) == pytest.approx((949.5, 994.05, 998.01))
    assert w.total == 1000
