"""Fixtures with real parts: private Mosquitto and embedded brokers, throwaway PostgreSQL DBs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgefleet.cloud.broker import EmbeddedBroker, MosquittoBroker, mosquitto_available

PG_ADMIN_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A private Mosquitto for the whole test session, on a free loopback port.

    Tests that stop or kill a broker use ``mosquitto_factory`` so they never disturb others.
    """
    if not mosquitto_available():
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (.ci/run does it)")
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Make private Mosquitto brokers for one test (stopped at its end); for fault tests."""
    made: list[MosquittoBroker] = []

    def make(**kwargs: object) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / f"mosquitto-{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(broker.start())
        return broker

    yield make
    for broker in made:
        broker.kill()


@pytest.fixture
def embedded_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """The embedded (amqtt) broker the laptop demo uses, on a free loopback port."""
    broker = EmbeddedBroker(tmp_path / "amqtt").start(timeout=30)
    yield broker
    broker.kill()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a throwaway PostgreSQL database, dropped after the test."""
    psycopg = pytest.importorskip("psycopg")
    name = f"edgefleet_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
