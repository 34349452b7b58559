"""Commands to a device with a record key are MAC'd with it; broadcasts stay Ed25519-signed."""

from __future__ import annotations

from pathlib import Path

from support.mqtt import Probe

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.trust import RecordKeys
from edgefleet.protocol import codec, topics
from edgefleet.protocol.messages import SetConfig


def _cmd(cid: str) -> SetConfig:
    return SetConfig(
        device_id="cloud", boot_id="cloud", seq=1, sent_at=1.0, command_id=cid,
        values={"health.interval_s": 2.0},
    )  # fmt: skip


def test_the_publisher_macs_a_registered_devices_commands(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    config = CloudConfig(
        workdir=tmp_path / "cloud", broker_url=mosquitto.url, http_port=0, fleet="macs",
        node_id="cloud-macs", dashboard=None,
    )  # fmt: skip
    with Cloud(config) as cloud:
        assert cloud.store is not None
        RecordKeys(cloud.store).register("keyed", bytes(range(32)))
        probe = Probe(mosquitto.host, mosquitto.port)
        try:
            probe.subscribe("edgefleet/v1/macs/+/cmd/#")
            assert cloud.publisher is not None
            sent = {
                "keyed": topics.command("macs", "keyed", "set-config"),
                "plain": topics.command("macs", "plain", "set-config"),
                "all": topics.command("macs", topics.BROADCAST, "set-config"),
            }
            for i, topic in enumerate(sent.values()):
                cloud.publisher.publish(topic, _cmd(f"c{i}"))
            assert probe.wait_for(lambda m: len(m) == 3)
            algs = {}
            for m in probe.messages:
                msg = codec.decode(m.payload)
                assert msg.auth is not None
                algs[topics.parse(m.topic).device] = (msg.auth.alg, msg.auth.key_id)
        finally:
            probe.close()
    assert algs["keyed"] == ("hmac-sha256", "keyed")
    assert algs["plain"][0] == "ed25519"
    assert algs[topics.BROADCAST][0] == "ed25519"
