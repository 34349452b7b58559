"""Malformed and unknown commands are answered or logged and change nothing; set-config works."""

from __future__ import annotations

import time

import pytest
from support.commit_acker import CommitAcker
from support.edge_agent import AgentThread, agent_toml, make_config

from edgefleet.protocol import topics
from edgefleet.protocol.codec import encode
from edgefleet.protocol.messages import Event, SetConfig


@pytest.fixture
def running(mosquitto, tmp_path, good_bundle, trusted_pub):
    acker = CommitAcker(mosquitto.host, mosquitto.port)
    runner = AgentThread(
        make_config(
            agent_toml(
                tmp_path / "d",
                mosquitto.port,
                device="cmd-1",
                bundle=good_bundle,
                keys=[trusted_pub],
            )
        )
    )
    runner.wait_ready()
    yield acker, runner
    runner.stop()
    acker.close()


def _pub(acker: CommitAcker, name: str, payload: bytes) -> None:
    acker.client.publish(topics.command("default", "cmd-1", name), payload, qos=1)


def _set_config(cid: str, values: dict) -> bytes:
    return encode(
        SetConfig(
            device_id="cloud",
            boot_id="cloud",
            seq=1,
            sent_at=time.time(),
            command_id=cid,
            values=values,
        )
    )


def test_malformed_and_unknown_commands_change_nothing(running):
    acker, runner = running
    agent = runner.agent
    before = agent.cfg
    model = agent.model_ref
    _pub(acker, "assign-model", b"\x00\x01 not json")
    _pub(acker, "set-config", b'{"schema": "set-config/1", "command_id": "c-bad", "values": 3}')
    _pub(acker, "reboot", b'{"schema": "reboot/1", "command_id": "c-reboot"}')
    _pub(
        acker,
        "assign-model",
        encode(
            SetConfig(
                device_id="cloud",
                boot_id="b",
                seq=1,
                sent_at=time.time(),
                command_id="c-x",
                values={},
            )
        ),
    )  # a set-config payload on the assign-model topic
    # the invalid set-config names itself: it gets a refusal with the decoder's reason
    assert acker.wait_for(lambda a: any(x.command_id == "c-bad" for x in a.acks))
    ack = next(x for x in acker.acks if x.command_id == "c-bad")
    assert (ack.status, ack.reason) == ("refused", "invalid")
    # a payload of the wrong kind for its topic is refused too
    assert acker.wait_for(lambda a: any(x.command_id == "c-x" for x in a.acks))
    assert next(x for x in acker.acks if x.command_id == "c-x").reason == "bad-topic"
    # the undecodable one and the unknown command are logged as events
    assert acker.wait_for(
        lambda a: sum(isinstance(m, Event) and m.kind == "bad-command" for _t, m in a.messages) >= 2
    )
    assert agent.commands.rejected == 4
    assert agent.cfg is before
    assert agent.model_ref == model


def test_set_config_whitelist(running):
    acker, runner = running
    agent = runner.agent
    _pub(acker, "set-config", _set_config("c-1", {"mqtt.port": 1, "health.interval_s": 9}))
    assert acker.wait_for(lambda a: any(x.command_id == "c-1" for x in a.acks))
    ack = next(x for x in acker.acks if x.command_id == "c-1")
    assert (ack.status, ack.reason) == ("refused", "unknown-key")
    assert "mqtt.port" in (ack.detail or "")
    assert agent.cfg.health.interval_s == 0.5  # nothing applied, not even the allowed key
    _pub(acker, "set-config", _set_config("c-2", {"health.interval_s": "fast"}))
    assert acker.wait_for(lambda a: any(x.command_id == "c-2" for x in a.acks))
    assert next(x for x in acker.acks if x.command_id == "c-2").reason == "bad-value"
    _pub(acker, "set-config", _set_config("c-3", {"health.interval_s": 2, "uplink.batch_max": 10}))
    assert acker.wait_for(lambda a: any(x.command_id == "c-3" for x in a.acks))
    assert next(x for x in acker.acks if x.command_id == "c-3").status == "succeeded"
    assert agent.cfg.health.interval_s == 2.0
    assert agent.uplink.cfg.batch_max == 10


def test_set_config_changes_the_outbox_cap_of_the_running_outbox(running):
    acker, runner = running
    agent = runner.agent
    _pub(acker, "set-config", _set_config("c-cap", {"outbox.max_records": 123}))
    assert acker.wait_for(lambda a: any(x.command_id == "c-cap" for x in a.acks))
    assert next(x for x in acker.acks if x.command_id == "c-cap").status == "succeeded"
    assert agent.cfg.outbox.max_records == 123
    assert agent.outbox is not None
    assert agent.outbox.max_records == 123
