"""The one place reference models are registered: add a module, add a line here."""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.models.activity import Activity
from edgefleet.models.base import ReferenceModel
from edgefleet.models.digits import Digits
from edgefleet.models.errors import UnknownModel
from edgefleet.models.vibration_anomaly import VibrationAnomaly

ZOO: dict[str, Callable[[], ReferenceModel]] = {
    "vibration-anomaly": VibrationAnomaly,
    "activity": Activity,
    "digits": Digits,
}


def model_names() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(ZOO)


def get_model(name: str) -> ReferenceModel:
    """A fresh instance of the model registered as ``name``."""
    try:
        factory = ZOO[name]
    except KeyError:
        raise UnknownModel(
            f"no model named {name!r}; `edgefleet models list` shows: {', '.join(model_names())}"
        ) from None
    return factory()
