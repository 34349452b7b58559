"""Errors of the model zoo, each a subclass of the shared edgefleet hierarchy."""

from __future__ import annotations

from edgefleet.protocol.errors import BundleError, ConfigError, EdgefleetError


class UnknownModel(ConfigError):
    """No model of that name is registered in the zoo."""

    reason = "unknown-model"


class UnsupportedVariant(ConfigError):
    """The runtime/quantization pair is not one the zoo can build."""

    reason = "unsupported-variant"


class ConversionFailed(EdgefleetError):
    """A converter (TFLite, ONNX export or ONNX Runtime quantization) failed."""

    reason = "conversion-failed"


class ParityFailed(EdgefleetError):
    """A converted model disagrees with its Keras source more than the parity bar allows."""

    reason = "parity-failed"


class GoldenMismatch(BundleError):
    """A bundle's model does not reproduce its own golden vectors."""

    reason = "golden-mismatch"


class WeightsFileError(BundleError):
    """A bundle's float weights file (role ``train``) is unreadable or does not fit the model."""

    reason = "bad-weights"
