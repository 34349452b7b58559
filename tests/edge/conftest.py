"""Fixtures of the agent's tests: tiny real models built once per session, keys, bundles."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.edge_http import RangeServer
from support.tiny_models import TinyZoo, build_zoo, make_bundle


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> TinyZoo:
    """The tiny model as float and int8 LiteRT and as ONNX (TensorFlow runs once here)."""
    return build_zoo(tmp_path_factory.mktemp("tiny-zoo"))


def _write_pub(key: Ed25519PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    """The fleet's bundle signing key."""
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def trusted_pub(signing_key: Ed25519PrivateKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fleet's public key file, as devices are given it."""
    return _write_pub(signing_key, tmp_path_factory.mktemp("keys") / "fleet.pub")


@pytest.fixture(scope="session")
def good_bundle(
    tiny_zoo: TinyZoo, signing_key: Ed25519PrivateKey, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A signed int8 LiteRT bundle of the tiny model, version 1.0.0."""
    return make_bundle(tiny_zoo, tmp_path_factory.mktemp("b") / "v1", signing_key).path


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, RangeServer]]:
    """A directory served over HTTP with Range support."""
    root = tmp_path / "www"
    root.mkdir()
    server = RangeServer(root)
    yield root, server
    server.close()
