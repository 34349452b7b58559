"""Command keys are read without `cryptography`: a device with a record key never loads it.

`cryptography` costs the agent about 8 MB of RSS (docs/agent.md). Commands to a provisioned
device are MAC'd with its record key, so the library is imported only for an Ed25519-signed
command (a broadcast, or a device without a record key).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.protocol import codec, topics
from edgefleet.protocol.commandauth import CommandKey, Signer, load_command_keys
from edgefleet.protocol.errors import KeyFileError
from edgefleet.protocol.messages import SetConfig
from edgefleet.protocol.signing import generate_keypair, key_id, load_private_key, load_public_key

CHILD = """
import sys
from pathlib import Path
from edgefleet.protocol import codec
from edgefleet.protocol.commandauth import CommandGuard, load_command_keys

pub, mac_topic, mac_file, sig_topic, sig_file = sys.argv[1:6]
guard = CommandGuard("d1", load_command_keys([pub]), bytes(range(32)))
payload = Path(mac_file).read_bytes()
guard.check(mac_topic, payload, codec.decode(payload))
print("after-mac", "cryptography" in sys.modules)
payload = Path(sig_file).read_bytes()
guard.check(sig_topic, payload, codec.decode(payload))
print("after-signature", "cryptography" in sys.modules)
"""


def _cmd(cid: str) -> SetConfig:
    return SetConfig(
        device_id="cloud", boot_id="cloud", seq=1, sent_at=1.0, command_id=cid,
        values={"health.interval_s": 2.0},
    )  # fmt: skip


def test_a_macd_command_needs_no_cryptography_and_a_signed_one_loads_it(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    signer = Signer(load_private_key(private))
    enc = codec.get_codec("json").encode
    mac_topic = topics.command("f", "d1", "set-config")
    sig_topic = topics.command("f", topics.BROADCAST, "set-config")
    (tmp_path / "mac").write_bytes(
        signer.seal(mac_topic, _cmd("c1"), enc, mac_key=bytes(range(32)))
    )
    (tmp_path / "sig").write_bytes(signer.seal(sig_topic, _cmd("c2"), enc))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(public), mac_topic, str(tmp_path / "mac"),
         sig_topic, str(tmp_path / "sig")],
        check=False, capture_output=True, text=True, timeout=60, env={**os.environ},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["after-mac False", "after-signature True"]


def test_a_pem_key_read_without_cryptography_is_the_same_key(tmp_path: Path) -> None:
    _, public = generate_keypair(tmp_path / "keys")
    (key,) = load_command_keys([public])
    assert key.key_id == key_id(load_public_key(public))


def _ec_public_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.mark.parametrize(
    "text",
    [
        "not a key",
        "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n",
        "ec",  # a PEM public key, but EC P-256, not Ed25519
    ],
)
def test_a_bad_key_file_says_what_it_is(tmp_path: Path, text: str) -> None:
    path = tmp_path / "k.pub"
    path.write_text(_ec_public_pem() if text == "ec" else text)
    with pytest.raises(KeyFileError, match="public key"):
        CommandKey.from_pem(path)
