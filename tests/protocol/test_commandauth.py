"""Signed bytes, the command guard's checks and record MACs, for both codecs."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.protocol import codec, topics
from edgefleet.protocol.commandauth import (
    CommandGuard,
    Signer,
    record_mac_ok,
    seal_record,
    sig_span,
)
from edgefleet.protocol.errors import AuthError
from edgefleet.protocol.messages import Commit, CommitRange, Health, SetConfig

CODECS = ["json", "msgpack"]


def _cmd(cid: str = "c1") -> SetConfig:
    return SetConfig(
        device_id="cloud", boot_id="cloud", seq=1, sent_at=1.0, command_id=cid,
        values={"health.interval_s": 2.0},
    )  # fmt: skip


def _refused(guard: CommandGuard, topic: str, payload: bytes) -> str:
    with pytest.raises(AuthError) as exc:
        guard.check(topic, payload, codec.decode(payload))
    return exc.value.reason


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.mark.parametrize("name", CODECS)
def test_every_changed_byte_breaks_the_signature(key: Ed25519PrivateKey, name: str) -> None:
    enc = codec.get_codec(name).encode
    topic = topics.command("f", "d1", "set-config")
    payload = Signer(key).seal(topic, _cmd(), enc)
    span = sig_span(payload)
    assert span is not None
    for i in range(len(payload)):
        if span[0] <= i < span[1]:
            continue
        bad = bytearray(payload)
        bad[i] ^= 0x01
        try:
            msg = codec.decode(bytes(bad))
        except Exception:
            continue
        guard = CommandGuard("d1", [key.public_key()])
        with pytest.raises(AuthError):
            guard.check(topic, bytes(bad), msg)


@pytest.mark.parametrize("name", CODECS)
def test_broadcasts_reach_every_device_and_a_topic_change_is_caught(
    key: Ed25519PrivateKey, name: str
) -> None:
    enc = codec.get_codec(name).encode
    topic = topics.command("f", topics.BROADCAST, "set-config")
    payload = Signer(key).seal(topic, _cmd(), enc)
    for device in ("d1", "d2"):
        CommandGuard(device, [key.public_key()]).check(topic, payload, codec.decode(payload))
    # The same bytes on one device's topic, or another fleet's broadcast: not what was signed.
    guard = CommandGuard("d1", [key.public_key()])
    assert _refused(guard, topics.command("f", "d1", "set-config"), payload) == "bad-signature"
    other_fleet = topics.command("g", topics.BROADCAST, "set-config")
    assert _refused(guard, other_fleet, payload) == "bad-signature"


def test_replay_window_accepts_out_of_order_once_and_refuses_below_it(
    key: Ed25519PrivateKey,
) -> None:
    topic = topics.command("f", "d1", "set-config")
    signer = Signer(key)
    payloads = [signer.seal(topic, _cmd(f"c{i}"), codec.JSON.encode) for i in range(4)]
    guard = CommandGuard("d1", [key.public_key()], window=2)
    for i in (1, 0, 3):  # late but inside the window: accepted
        guard.check(topic, payloads[i], codec.decode(payloads[i]))
    assert _refused(guard, topic, payloads[0]) == "replayed"  # seen
    # high is now cseq 3; cseq 0 is 3 below it, outside a window of 2 (even if never seen)
    guard2 = CommandGuard("d1", [key.public_key()], window=2)
    guard2.check(topic, payloads[3], codec.decode(payloads[3]))
    assert _refused(guard2, topic, payloads[0]) == "replayed"
    # Two signers (two ingest processes) have separate windows.
    other = Signer(key).seal(topic, _cmd("o"), codec.JSON.encode)
    guard.check(topic, other, codec.decode(other))


def test_expiry_follows_the_cloud_clock_not_a_wrong_device_clock(key: Ed25519PrivateKey) -> None:
    topic = topics.command("f", "d1", "set-config")
    cloud_now = [1_800_000_000.0]
    signer = Signer(key, clock=lambda: cloud_now[0])
    mono = [0.0]
    # A Pi without an RTC that booted in 1970.
    guard = CommandGuard("d1", [key.public_key()], clock=lambda: 0.0, monotonic=lambda: mono[0])
    fresh = signer.seal(topic, _cmd("a"), codec.JSON.encode, ttl_s=60)
    guard.check(topic, fresh, codec.decode(fresh))
    assert guard.now() == pytest.approx(cloud_now[0])
    late = signer.seal(topic, _cmd("b"), codec.JSON.encode, ttl_s=60)
    mono[0] = 120.0  # two minutes pass on the device before it arrives
    assert _refused(guard, topic, late) == "expired"


def test_unsigned_wrong_device_and_mac_rules(key: Ed25519PrivateKey) -> None:
    topic = topics.command("f", "d1", "commit")
    commit = Commit(
        device_id="cloud", boot_id="c", seq=1, sent_at=1.0, ranges=[CommitRange("b", 0, 5)]
    )
    record_key = os.urandom(32)
    guard = CommandGuard("d1", [key.public_key()], record_key)
    assert _refused(guard, topic, codec.encode(commit)) == "unsigned"
    macd = Signer(key).seal(topic, commit, codec.JSON.encode, mac_key=record_key)
    guard.check(topic, macd, codec.decode(macd))
    wrong = Signer(key).seal(topic, commit, codec.JSON.encode, mac_key=os.urandom(32))
    assert _refused(guard, topic, wrong) == "bad-signature"
    # A device without a record key cannot check a MAC: refused, not trusted.
    no_key = CommandGuard("d1", [key.public_key()])
    assert _refused(no_key, topic, macd) == "bad-signature"
    # Signed for d2 and sent on d2's topic: d1 is not the target.
    t2 = topics.command("f", "d2", "commit")
    for_d2 = Signer(key).seal(t2, commit, codec.JSON.encode)
    assert _refused(guard, t2, for_d2) == "wrong-device"
    assert guard.refused == {"unsigned": 1, "bad-signature": 1, "wrong-device": 1}


@pytest.mark.parametrize("name", CODECS)
def test_record_macs(name: str) -> None:
    key = os.urandom(32)
    topic = topics.telemetry("f", "d1", "health")
    h = Health(device_id="d1", boot_id="b", seq=3, sent_at=2.0, uptime_s=1.0)
    sealed = seal_record(key, topic, codec.encode(h, name), "d1")
    msg = codec.decode(sealed)
    assert msg == Health(
        auth=msg.auth, device_id="d1", boot_id="b", seq=3, sent_at=2.0, uptime_s=1.0
    )
    assert record_mac_ok(key, topic, sealed, msg)
    assert not record_mac_ok(os.urandom(32), topic, sealed, msg)
    assert not record_mac_ok(key, topics.telemetry("f", "d1", "other"), sealed, msg)
    assert not record_mac_ok(key, topic, codec.encode(h, name), h)
