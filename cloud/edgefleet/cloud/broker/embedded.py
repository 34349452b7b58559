"""An embedded MQTT broker (amqtt) for laptops without Mosquitto, run as a child process.

amqtt is pure Python and speaks MQTT 3.1.1 only: no shared subscriptions, lower throughput.
It is the zero-setup default for demos; tests of delivery guarantees and the scale-out ingest
use Mosquitto (docs/broker.md).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
import sys
from pathlib import Path

from edgefleet.cloud.broker.base import BrokerProcess
from edgefleet.protocol.errors import MissingExtra


class EmbeddedBroker(BrokerProcess):
    """amqtt on a loopback port in its own process (so it can be killed like a real broker)."""

    name = "amqtt"

    def __init__(self, workdir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        if importlib.util.find_spec("amqtt") is None:
            raise MissingExtra(
                "the embedded broker needs the 'broker' extra: pip install 'edgefleet[broker]' "
                "(or install Mosquitto: apt-get install -y mosquitto)"
            )
        super().__init__(workdir, port, host)

    def command(self) -> list[str]:
        """The argv that runs this module as the broker."""
        return [
            sys.executable,
            "-m",
            "edgefleet.cloud.broker.embedded",
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]


def broker_config(host: str, port: int) -> dict[str, object]:
    """amqtt's configuration for an anonymous loopback listener."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "sys_interval": 0,
        "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
        "topic-check": {"enabled": False},
    }


async def _serve(host: str, port: int) -> None:
    from amqtt.broker import Broker

    broker = Broker(broker_config(host, port))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> None:
    """Run the embedded broker until SIGTERM."""
    parser = argparse.ArgumentParser(description="edgefleet's embedded MQTT broker (amqtt)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
