"""Session fixtures of the federated-learning tests: trainable models are built once."""

from __future__ import annotations

import pytest
from support.fl_models import BuiltTrainable, build


@pytest.fixture(scope="session")
def digits_trainable() -> BuiltTrainable:
    """The digits MLP and its trainable LiteRT variant."""
    return build("digits")


@pytest.fixture(scope="session")
def vibration_trainable() -> BuiltTrainable:
    """The vibration autoencoder and its trainable LiteRT variant."""
    return build("vibration-anomaly")
