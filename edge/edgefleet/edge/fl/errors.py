"""Errors of on-device federated learning, in the shared edgefleet hierarchy."""

from __future__ import annotations

from edgefleet.protocol.errors import ConfigError, EdgefleetError


class FlError(EdgefleetError):
    """Base of failures of on-device federated learning."""

    reason = "fl"


class TrainableModelError(FlError):
    """The trainable LiteRT model is missing a signature or does not load."""

    reason = "trainable-model"


class BadUpdate(FlError):
    """Training produced an update that must not leave the device (NaN, infinite, empty)."""

    reason = "bad-update"


class NoTrainingData(FlError):
    """The training buffer holds no usable samples for this model."""

    reason = "no-training-data"


class TrainingRefused(FlError):
    """The device policy does not allow training now (CPU load, temperature, time window)."""

    reason = "training-refused"


class SuperNodeError(FlError):
    """The ``flower-supernode`` child process cannot be started."""

    reason = "supernode"


class FlConfigError(ConfigError):
    """The ``[fl]`` section of the agent configuration is invalid."""

    reason = "bad-fl-config"


class FlDisabled(FlError):
    """This device does not take part in federated learning (``[fl] enabled = false``)."""

    reason = "fl-disabled"


class WrongModel(FlError):
    """The run trains a model this device does not serve now."""

    reason = "wrong-model"


class TrainingBusy(FlError):
    """A training session is already running on this device."""

    reason = "busy"


class SuperLinkMismatch(FlError):
    """An always-on SuperNode dials another SuperLink than the one the command names."""

    reason = "superlink-mismatch"
