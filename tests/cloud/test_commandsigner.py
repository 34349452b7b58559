"""The cloud's command key, record keys in the store, and the ingest's record-MAC policy."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgefleet.cloud.commandsigner import CommandSigner, ensure_command_key
from edgefleet.cloud.ingest.base import Chunk
from edgefleet.cloud.ingest.core import IngestCore
from edgefleet.cloud.ingest.settings import IngestSettings
from edgefleet.cloud.store import open_store
from edgefleet.cloud.trust import RecordKeys
from edgefleet.protocol import codec, topics
from edgefleet.protocol.commandauth import CommandGuard, seal_record
from edgefleet.protocol.messages import Commit, CommitRange, Health
from edgefleet.protocol.signing import load_public_key


def test_command_key_is_made_once_with_mode_0600_and_signs_what_agents_verify(
    tmp_path: Path,
) -> None:
    priv, pub, created = ensure_command_key(tmp_path)
    assert created
    assert priv == tmp_path / "keys" / "command.key"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert ensure_command_key(tmp_path) == (priv, pub, False)
    signer = CommandSigner(priv)
    topic = topics.command("f", "d1", "commit")
    commit = Commit(
        device_id="cloud", boot_id="c", seq=1, sent_at=1.0, ranges=[CommitRange("b", 0, 9)]
    )
    payload = signer.sign(topic, commit)
    guard = CommandGuard("d1", [load_public_key(pub)])
    guard.check(topic, payload, codec.decode(payload))
    assert guard.accepted == 1


def test_record_keys_persist_and_the_required_policy_quarantines_unkeyed_devices(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    store = open_store(url)
    key = os.urandom(32)
    RecordKeys(store).register("keyed", key)
    other = open_store(url)
    assert RecordKeys(other).get("keyed") == key
    assert RecordKeys(other).get("nobody") is None
    other.close()

    core = IngestCore(
        IngestSettings(broker_url="mqtt://unused:1883", record_macs="required"), store
    )

    def health(device: str, seq: int, mac_key: bytes | None) -> tuple[bytes, bytes]:
        topic = topics.telemetry("f", device, "health")
        payload = codec.encode(
            Health(device_id=device, boot_id="b", seq=seq, sent_at=1.0, uptime_s=1.0)
        )
        if mac_key is not None:
            payload = seal_record(mac_key, topic, payload, device)
        return topic.encode(), payload

    core.feed(
        Chunk(
            1.0,
            [
                health("keyed", 1, key),  # stored
                health("keyed", 2, None),  # impostor: no MAC
                health("keyed", 3, os.urandom(32)),  # impostor: wrong key
                health("unkeyed", 1, None),  # unauthenticated under "required"
            ],
        )
    )
    out = core.flush()
    assert out is not None
    assert out.quarantined == {"impostor": 2, "unauthenticated": 1}
    assert [(r["seq"]) for r in store.records("health", device_id="keyed")] == [1]
    # The commit-ack for the keyed device carries its key: the worker MACs it.
    assert [(c.device, c.mac_key) for c in out.commits] == [("keyed", key)]
    store.close()
