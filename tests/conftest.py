"""Fixtures with real parts: private Mosquitto and embedded brokers, throwaway PostgreSQL DBs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgefleet.cloud.broker import EmbeddedBroker, MosquittoBroker, mosquitto_available

PG_ADMIN_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def expected_seconds(item: pytest.Item) -> float:
    """How long a test takes on a loaded 2-core machine: its ``slow(seconds=N)``, else 0."""
    mark = item.get_closest_marker("slow")
    return float(mark.kwargs.get("seconds", 0.0)) if mark is not None else 0.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the longest tests first; the rest keep their order (the sort is stable).

    In file order the demo (in the last file) starts late, and its two to three minutes then
    end the suite on their own. With ``--maxschedchunk=1`` (the Makefile) each xdist worker
    takes the next test when it is free, which makes this the longest-first schedule.
    """
    items.sort(key=expected_seconds, reverse=True)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A private Mosquitto for the whole test session, on a free loopback port.

    Tests that stop or kill a broker use ``mosquitto_factory`` so they never disturb others.
    """
    if not mosquitto_available():
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (make test does it)")
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
