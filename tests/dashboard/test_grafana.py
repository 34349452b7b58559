"""The Grafana dashboard JSON: structure, variables, and PromQL that names real /metrics series."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from support.cloud_ingest import sqlite_url, unique_fleet
from support.dashboard_cloud import dashboard_cloud
from support.dashboard_devices import SimDevice

from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.dashboard.prometheus import DeviceCollector, SeriesLimits
from edgefleet.cloud.grafana import dashboard_path, load_dashboard
from edgefleet.cloud.store import open_store
from edgefleet.cloud.store.base import DeviceUpdate, IngestBatch, StatusUpdate
from edgefleet.protocol import topics
from edgefleet.protocol.errors import ConfigError

METRIC = re.compile(r"\bedgefleet_[a-z0-9_]+")
PROM_DS = {"type": "prometheus", "uid": "${datasource}"}


def _panels() -> list[dict]:
    return [p for p in load_dashboard()["panels"] if p["type"] != "row"]


def test_dashboard_json_structure_imports_cleanly() -> None:
    d = load_dashboard()
    assert dashboard_path().name == "edgefleet.json"
    assert d["uid"] == "edgefleet-fleet"
    assert d["title"]
    assert isinstance(d["schemaVersion"], int)
    assert "id" not in d  # an id would make Grafana overwrite another dashboard on import
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        assert g["w"] > 0
        assert g["h"] > 0
    for p in _panels():
        assert p["type"] in {"stat", "timeseries", "bargauge", "table"}, p["title"]
        assert p["datasource"] == PROM_DS, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"] == PROM_DS
            assert METRIC.search(t["expr"]), t["expr"]


def test_every_variable_used_is_defined() -> None:
    d = load_dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    text = str(d["panels"]) + str(d["templating"])
    used = set(re.findall(r"\$\{?([a-z_]+)", text)) - {"__rate_interval"}
    assert used <= set(variables), used - set(variables)
    for name in ("fleet", "device"):
        assert variables[name]["datasource"] == PROM_DS
        assert METRIC.search(variables[name]["query"]["query"])


@pytest.mark.slow
def test_every_promql_metric_is_exposed_by_metrics(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    with dashboard_cloud(tmp_path, mosquitto.url, fleet) as dc:
        dev = SimDevice(mosquitto.host, mosquitto.port, "m-1", fleet)
        dev.birth()
        dev.send_health()
        dev.send_inference(3)
        dev.client.publish(topics.telemetry(fleet, "m-1", "health"), b"garbage", qos=1)
        assert dev.wait_committed()
        with httpx.Client(base_url=dc.url, timeout=10, headers=dc.headers) as http:
            deadline = time.monotonic() + 10
            while True:
                text = http.get("/metrics").text
                # The per-device collector caches a scrape for 2 s: wait for the device too.
                ready = all(k in text for k in ("quarantined_total{", "edgefleet_device_online{"))
                if ready or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        dev.close()
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    wanted = {m for p in _panels() for t in p["targets"] for m in METRIC.findall(t["expr"])}
    for v in load_dashboard()["templating"]["list"]:
        if v["type"] == "query":
            wanted |= set(METRIC.findall(v["query"]["query"]))
    missing = sorted(wanted - exposed)
    assert not missing, f"PromQL names series /metrics does not expose: {missing}"
    assert f'edgefleet_device_online{{device="m-1",fleet="{fleet}"}} 1.0' in text


def test_device_series_cardinality_is_bounded(tmp_path: Path) -> None:
    store = open_store(sqlite_url(tmp_path))
    now = time.time()
    batch = IngestBatch()
    for i in range(5):
        st = StatusUpdate(True, "start", "b", f"agent-{i}", "m", f"1.{i}")
        batch.devices[f"d{i}"] = DeviceUpdate(f"d{i}", "f1", now, st)
    store.write_batch(batch)
    fams = {
        f.name: f
        for f in DeviceCollector(
            store, limits=SeriesLimits(max_devices=2, max_versions=2)
        ).collect()
    }
    store.close()
    assert len(fams["edgefleet_device_online"].samples) == 2
    assert fams["edgefleet_device_series_truncated"].samples[0].value == 3
    agents = {
        s.labels["agent_version"]: s.value for s in fams["edgefleet_fleet_devices_by_agent"].samples
    }
    assert len(agents) == 3  # two listed, the rest folded into "other"
    assert agents["other"] == 3
    assert sum(agents.values()) == 5


def test_bad_series_limits_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        SeriesLimits(max_versions=0)
