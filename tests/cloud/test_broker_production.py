"""The generated production broker configuration, run by a real Mosquitto (docs/broker.md).

Every test runs twice: with the dynamic security plugin (DynsecAuthority) and with the ACL
file + CRL + SIGHUP fallback (FileAuthority). Certificates come from the project CA
(edgefleet.cloud.identity.ca.ProjectCA); the invalid ones are forged with `cryptography`
(tests/support/tls_certs.py).
"""

from __future__ import annotations

import datetime as dt
import getpass
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from support.tls_certs import CertAuthority, CertPair, client_cert

from edgefleet.cloud.broker import free_port, mosquitto_available
from edgefleet.cloud.broker.production import (
    CLOUD,
    COMMANDS,
    INGEST,
    ProductionConfig,
    ProductionMosquitto,
    dynsec_plugin,
    write_production_config,
)
from edgefleet.cloud.identity.ca import ProjectCA
from edgefleet.protocol import topics

BACKENDS = ["dynsec", "files"]


class Refused(Exception):
    """The broker did not let the client in."""


class Session:
    """One MQTT v5 client: connect (or be refused), publish at QoS 1, subscribe, collect."""

    def __init__(
        self,
        port: int,
        *,
        ca: Path | None = None,
        pair: CertPair | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
    ) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.disconnected_at: float | None = None
        self.acks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.received: list[str] = []
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        if tls or pair is not None:
            c.tls_set(
                ca_certs=str(ca),
                certfile=str(pair.cert) if pair else None,
                keyfile=str(pair.key) if pair else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if username is not None:
            c.username_pw_set(username, password)
        try:
            c.connect("127.0.0.1", port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            raise Refused(f"connect failed: {exc!r}") from exc
        c.loop_start()
        with self.cond:
            self.cond.wait_for(
                lambda: self.connack is not None or self.disconnected_at is not None, 5
            )
        if self.connack is None or self.connack.is_failure:
            self.close()
            raise Refused(f"CONNACK {self.connack}, disconnected: {self.disconnected_at}")

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        with self.cond:
            self.connack = rc
            self.cond.notify_all()

    def _on_disconnect(self, *_a: object) -> None:
        with self.cond:
            self.disconnected_at = time.monotonic()
            self.cond.notify_all()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self.cond:
            self.acks[mid] = rc
            self.cond.notify_all()

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, rcs: list[ReasonCode], _p: object
    ) -> None:
        with self.cond:
            self.subacks[mid] = rcs
            self.cond.notify_all()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.received.append(msg.topic)
            self.cond.notify_all()

    def publish(self, topic: str, timeout: float = 5) -> bool:
        """True if the broker's PUBACK says accepted; False for 'not authorized' or no PUBACK."""
        mid = self.client.publish(topic, b"{}", qos=1).mid
        with self.cond:
            self.cond.wait_for(lambda: mid in self.acks, timeout)
        rc = self.acks.get(mid)
        return rc is not None and not rc.is_failure

    def subscribe(self, topic_filter: str) -> bool:
        """True if the SUBACK grants the subscription."""
        _rc, mid = self.client.subscribe(topic_filter, qos=1)
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.subacks, 5), topic_filter
        return not self.subacks[mid][0].is_failure

    def wait_for(self, topic: str, timeout: float = 5) -> bool:
        """Wait until a message on ``topic`` arrived."""
        with self.cond:
            return self.cond.wait_for(lambda: topic in self.received, timeout)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Fleet:
    """A running production broker, its PKI and a way to open sessions on it."""

    cfg: ProductionConfig
    broker: ProductionMosquitto
    ca: ProjectCA
    certs: dict[str, CertPair]
    serials: dict[str, int]
    revoked: list[int]
    tmp: Path
    sessions: list[Session]

    def device(self, name: str, cert: str | None = None) -> Session:
        """A TLS session with the named certificate (default: the device's own)."""
        return self._keep(
            Session(self.cfg.tls_port, ca=self.ca.cert_path, pair=self.certs[cert or name])
        )

    def cloud(self, identity: str = CLOUD) -> Session:
        """A session of one of the cloud's identities on the loopback listener."""
        return self._keep(
            Session(self.cfg.local_port, username=identity, password=self.cfg.passwords[identity])
        )

    def _keep(self, s: Session) -> Session:
        self.sessions.append(s)
        return s

    def issue(self, name: str, device_id: str, fleet: str = "f1") -> int:
        """A certificate from the project CA for ``device_id``; returns its serial."""
        key = ec.generate_private_key(ec.SECP256R1())
        pem = self.ca.issue_device_cert(key.public_key(), device_id, fleet)
        cert_path, key_path = self.tmp / f"{name}.pem", self.tmp / f"{name}.key"
        cert_path.write_bytes(pem)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        self.certs[name] = CertPair(cert_path, key_path)
        self.serials[name] = x509.load_pem_x509_certificate(pem).serial_number
        return self.serials[name]


@pytest.fixture
def production(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    if not mosquitto_available():
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto")
    made: list[Fleet] = []

    def start(backend: str, *, anonymous_loopback: bool = False) -> Fleet:
        if backend == "dynsec" and dynsec_plugin() is None:
            pytest.fail(
                "Mosquitto's dynamic security plugin is missing (Debian's mosquitto has it)"
            )
        tmp = tmp_path / f"pki-{len(made)}"
        tmp.mkdir()
        ca = ProjectCA.load_or_create(tmp / "ca")
        server_key = ec.generate_private_key(ec.SECP256R1())
        (tmp / "server.pem").write_bytes(
            ca.issue_server_cert(["localhost", "127.0.0.1"], server_key)
        )
        (tmp / "server.key").write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        fleet = Fleet(None, None, ca, {}, {}, [], tmp, [])  # type: ignore[arg-type]
        for name, fl in (("d1", "f1"), ("d2", "f1"), ("d3", "f2")):
            fleet.issue(name, name, fl)
        # An older certificate of d1, revoked before the broker starts.
        fleet.revoked.append(fleet.issue("d1-revoked", "d1"))
        fleet.cfg = write_production_config(
            tmp / "broker",
            ca=ca.cert_path,
            cert=tmp / "server.pem",
            key=tmp / "server.key",
            crl=ca.crl_pem(fleet.revoked),
            tls_host="127.0.0.1",
            tls_port=free_port(),
            local_port=free_port(),
            anonymous_loopback=anonymous_loopback,
            backend=backend,  # type: ignore[arg-type]
            devices=[("d1", "f1"), ("d2", "f1"), ("d3", "f2")],
            user=getpass.getuser(),
        )
        fleet.broker = ProductionMosquitto(fleet.cfg).start()
        made.append(fleet)
        return fleet

    yield start
    for fleet in made:
        for s in fleet.sessions:
            s.close()
        fleet.broker.kill()


def _invalid_certificates(fleet: Fleet) -> dict[str, CertPair | None]:
    now = dt.datetime.now(dt.UTC)
    d = fleet.tmp / "invalid"
    other_ca = CertAuthority(d / "other-ca", name="other-ca")
    fleet.issue("intruder", "intruder")  # our CA, but no device of that id is enrolled
    return {
        "expired": client_cert(
            d,
            "expired",
            "d1",
            issuer=(fleet.ca.cert, fleet.ca.key),
            not_before=now - dt.timedelta(days=10),
            not_after=now - dt.timedelta(days=1),
        ),
        "wrong CA": client_cert(d, "foreign", "d1", issuer=(other_ca.cert, other_ca.key)),
        "revoked": fleet.certs["d1-revoked"],
        "self-signed": client_cert(d, "self", "d1"),
        "wrong CN": fleet.certs["intruder"],
        "none": None,
    }


def _locked_out(fleet: Fleet, pair: CertPair | None) -> bool:
    """True if the TLS listener refuses ``pair``, or lets it in with no right at all.

    Mosquitto 2.0 skips password checks for certificate identities, so a certificate of our
    CA whose CN is no enrolled device opens a session; it may publish nothing and receive
    nothing. Every other invalid certificate fails the TLS handshake.
    """
    try:
        s = Session(fleet.cfg.tls_port, ca=fleet.ca.cert_path, pair=pair, tls=True)
    except Refused:
        return True
    fleet.sessions.append(s)
    watcher = fleet.cloud(INGEST)
    assert watcher.subscribe(topics.uplink_filters()[0])
    published = s.publish(topics.status("f1", "intruder")) or s.publish(topics.status("f1", "d1"))
    # The files backend grants the SUBACK (Mosquitto's ACL file checks reads at delivery);
    # what counts is that nothing is delivered.
    s.subscribe(f"{topics.PREFIX}/#")
    s.subscribe(topics.device_command_filters("f1", "d1")[0])
    cmd = topics.command("f1", "d1", "commit")
    assert fleet.cloud(COMMANDS).publish(cmd)
    return not (published or s.wait_for(cmd, 1) or s.received or watcher.received)


@pytest.mark.slow(seconds=8)
@pytest.mark.parametrize("backend", BACKENDS)
def test_six_of_six_invalid_certificates_are_refused(
    production: Callable[..., Fleet], backend: str
) -> None:
    fleet = production(backend)
    # The valid certificate gets in, so the refusals below are not a broken listener.
    assert fleet.device("d1").publish(topics.status("f1", "d1"))
    invalid = _invalid_certificates(fleet)
    refused = {name: _locked_out(fleet, pair) for name, pair in invalid.items()}
    assert refused == dict.fromkeys(invalid, True), refused
    assert sum(refused.values()) == 6


@pytest.mark.slow(seconds=8)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_device_is_confined_to_its_own_topics(
    production: Callable[..., Fleet], backend: str
) -> None:
    fleet = production(backend)
    ingest = fleet.cloud(INGEST)
    for f in topics.uplink_filters():
        assert ingest.subscribe(f"$share/ingest/{f}"), f
    commands = fleet.cloud(COMMANDS)
    d1, d2 = fleet.device("d1"), fleet.device("d2")
    assert d2.subscribe(topics.device_command_filters("f1", "d2")[0])
    assert d2.subscribe(topics.device_command_filters("f1", "d2")[1])
    assert d1.subscribe(topics.device_command_filters("f1", "d1")[0])

    forbidden_publishes = [
        topics.status("f1", "d2"),
        topics.telemetry("f1", "d2", "health"),
        topics.event("f1", "d2", "model-swap"),
        topics.command_ack("f1", "d2", "commit"),
        topics.status("f2", "d1"),  # its own id in another fleet's tree
        topics.command("f1", "d2", "set-config"),
        topics.command("f1", "d1", "set-config"),  # no command at all, not even to itself
        topics.command("f1", "_all", "set-config"),
    ]
    forbidden_subscribes = [
        "edgefleet/v1/f1/d2/cmd/+",
        "edgefleet/v1/#",
        "edgefleet/v1/f1/+/cmd/+",
        "edgefleet/v1/f1/+/telemetry/+",
    ]
    succeeded = [t for t in forbidden_publishes if d1.publish(t)]
    d1_spy = fleet.device("d1")  # a second session of d1 that only tries to read
    granted = [f for f in forbidden_subscribes if d1_spy.subscribe(f)]

    # Allowed actions work, so the refusals above are the ACL and not a dead session.
    allowed = [
        topics.status("f1", "d1"),
        topics.telemetry("f1", "d1", "health"),
        topics.event("f1", "d1", "model-swap"),
        topics.command_ack("f1", "d1", "commit"),
    ]
    for t in allowed:
        assert d1.publish(t), t
        assert ingest.wait_for(t), t
    to_d2, to_d1 = topics.command("f1", "d2", "commit"), topics.command("f1", "d1", "commit")
    broadcast = topics.command("f1", "_all", "assign-model")
    for t in (to_d2, to_d1, broadcast):
        assert commands.publish(t), t
    assert d2.wait_for(to_d2)
    assert d2.wait_for(broadcast)
    assert d1.wait_for(to_d1)
    theirs = topics.telemetry("f1", "d2", "inference")
    assert d2.publish(theirs)
    assert ingest.wait_for(theirs)

    # Everything sent earlier has been routed by now: a forbidden publish reached nobody,
    # a forbidden subscription delivered nothing.
    observed = set(ingest.received) | set(d2.received) | set(d1.received)
    delivered = [t for t in forbidden_publishes if t in observed]
    assert to_d1 not in d2.received
    # Mosquitto's ACL file grants such SUBACKs and filters at delivery: what counts is that
    # the spy got nothing but what d1 may read anyway.
    readable = {to_d1, broadcast}
    leaked = [
        f
        for f in forbidden_subscribes
        if any(mqtt.topic_matches_sub(f, t) for t in d1_spy.received if t not in readable)
    ]
    failures = sorted({*succeeded, *delivered, *leaked})
    assert len(forbidden_publishes) + len(forbidden_subscribes) == 12
    assert failures == [], f"{len(failures)}/12 forbidden actions succeeded: {failures}"
    assert set(d1_spy.received) <= readable
    if backend == "dynsec":
        assert granted == []  # the plugin refuses them at SUBACK already


@pytest.mark.slow(seconds=8)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_revoked_device_is_cut_off_within_five_seconds(
    production: Callable[..., Fleet], backend: str
) -> None:
    fleet = production(backend)
    authority = fleet.cfg.authority(
        crl=lambda: fleet.ca.crl_pem(fleet.revoked), reload=fleet.broker.reload
    )
    commands = fleet.cloud(COMMANDS)
    d1 = fleet.device("d1")
    assert d1.subscribe(topics.device_command_filters("f1", "d1")[0])
    before = topics.command("f1", "d1", "commit")
    assert commands.publish(before)
    assert d1.wait_for(before)

    fleet.revoked.append(fleet.serials["d1"])
    start = time.monotonic()
    authority.revoke("d1")
    # Cut off: disconnected (dynsec kicks it), or every publish refused and nothing delivered.
    deadline = start + 5
    while time.monotonic() < deadline:
        if d1.disconnected_at is not None or not d1.publish(topics.status("f1", "d1"), 1):
            break
        time.sleep(0.05)
    cut_off_s = time.monotonic() - start
    assert cut_off_s < 5, f"d1 could still publish {cut_off_s:.2f}s after revoke"
    after = topics.command("f1", "d1", "set-config")
    assert commands.publish(after)
    assert not d1.wait_for(after, 1)
    with pytest.raises(Refused):
        fleet.device("d1")
    reconnect_refused_s = time.monotonic() - start
    assert reconnect_refused_s < 5
    if backend == "dynsec":
        assert d1.disconnected_at is not None
        assert d1.disconnected_at - start < 5
    print(f"{backend}: cut off {cut_off_s:.3f}s, reconnect refused by {reconnect_refused_s:.3f}s")
    # The other devices are untouched.
    assert fleet.device("d2").publish(topics.status("f1", "d2"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_enrolment_takes_effect_without_a_restart(
    production: Callable[..., Fleet], backend: str
) -> None:
    fleet = production(backend)
    authority = fleet.cfg.authority(reload=fleet.broker.reload)
    fleet.issue("d4", "d4", "f2")
    d4 = fleet.device("d4")
    assert not d4.publish(topics.status("f2", "d4"))
    pid = fleet.broker.pid
    authority.enrol("d4", "f2")
    time.sleep(0.3)  # SIGHUP is asynchronous (files backend)
    assert d4.publish(topics.status("f2", "d4"))
    assert not d4.publish(topics.status("f1", "d4"))
    assert fleet.broker.pid == pid


@pytest.mark.parametrize("backend", BACKENDS)
def test_anonymous_clients_only_on_loopback_and_only_when_asked(
    production: Callable[..., Fleet], backend: str
) -> None:
    strict = production(backend)
    with pytest.raises(Refused):
        Session(strict.cfg.local_port)
    with pytest.raises(Refused):
        Session(strict.cfg.tls_port, ca=strict.ca.cert_path, tls=True)
    with pytest.raises(Refused):
        Session(strict.cfg.tls_port)  # plain MQTT to the TLS port
    with pytest.raises(Refused):
        Session(strict.cfg.local_port, username=CLOUD, password="wrong")

    laptop = production(backend, anonymous_loopback=True)
    anon = Session(laptop.cfg.local_port)
    laptop.sessions.append(anon)
    assert anon.publish(topics.status("f1", "d1"))
    with pytest.raises(Refused):
        Session(laptop.cfg.tls_port, ca=laptop.ca.cert_path, tls=True)
    assert "listener" in laptop.cfg.config_path.read_text()
    for line in laptop.cfg.config_path.read_text().splitlines():
        if line.startswith("listener") and line.split()[1] == str(laptop.cfg.local_port):
            assert line.split()[2] == "127.0.0.1"


def test_broker_config_command_writes_a_config_mosquitto_runs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgefleet.cloud.cli import app

    out = tmp_path / "broker"
    tls_port, local_port = free_port(), free_port()
    result = CliRunner().invoke(
        app,
        [
            "broker-config",
            "--out", str(out),
            "--workdir", str(tmp_path / "cloud"),
            "--tls-port", str(tls_port),
            "--local-port", str(local_port),
            "--user", getpass.getuser(),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = ProductionConfig.load(out)
    assert (cfg.local_port, cfg.tls_port) == (local_port, tls_port)
    assert cfg.passwords[CLOUD] in cfg.local_url()
    assert oct((out / "credentials.json").stat().st_mode & 0o777) == "0o600"
    broker = ProductionMosquitto(cfg).start()
    try:
        s = Session(local_port, username=CLOUD, password=cfg.passwords[CLOUD])
        assert s.subscribe(topics.uplink_filters()[0])
        s.close()
        with pytest.raises(Refused):
            Session(local_port)
    finally:
        broker.kill()


def test_the_laptop_broker_says_it_allows_anonymous_clients(
    mosquitto_factory: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="edgefleet.cloud.broker.base"):
        mosquitto_factory()
    assert any("allows anonymous clients" in r.getMessage() for r in caplog.records)
