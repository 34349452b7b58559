"""Run Mosquitto as a child process with the configuration edgefleet ships."""

from __future__ import annotations

import getpass
import shutil
from importlib import resources
from pathlib import Path
from string import Template

from edgefleet.cloud.broker.base import BrokerProcess
from edgefleet.protocol.errors import MissingExtra


def mosquitto_available() -> bool:
    """True if a ``mosquitto`` executable is on PATH (or in /usr/sbin)."""
    return _find() is not None


def _find() -> str | None:
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def shipped_config() -> str:
    """The text of the Mosquitto configuration template shipped in this package."""
    return (resources.files(__package__) / "mosquitto.conf").read_text()


class MosquittoBroker(BrokerProcess):
    """A private Mosquitto on a loopback port, with persistence in its work directory."""

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        extra_config: str = "",
    ) -> None:
        super().__init__(workdir, port, host)
        self.extra_config = extra_config
        exe = _find()
        if exe is None:
            raise MissingExtra(
                "mosquitto is not installed: apt-get install -y mosquitto "
                "(or run without --broker mosquitto to use the embedded broker)"
            )
        self.executable = exe

    @property
    def config_path(self) -> Path:
        """The configuration file written for this broker."""
        return self.workdir / "mosquitto.conf"

    def command(self) -> list[str]:
        """Write the configuration and return the argv that starts Mosquitto with it."""
        text = Template(shipped_config()).substitute(
            host=self.host, port=self.port, datadir=self.workdir
        )
        # Started as root, Mosquitto drops to the `mosquitto` user, which cannot write a
        # persistence file in the caller's private work directory: keep the caller's user.
        text += f"\nuser {getpass.getuser()}\n"
        self.config_path.write_text(text + "\n" + self.extra_config + "\n")
        return [self.executable, "-c", str(self.config_path)]
