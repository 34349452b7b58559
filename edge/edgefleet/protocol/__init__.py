"""The wire contract of edgefleet: MQTT topics, message schemas, codecs and model bundles.

Both the device and the cloud import this package; it depends only on the standard library,
msgspec and cryptography, so it runs on a microcontroller-class Linux device as well.
"""

from edgefleet.protocol.codec import BINARY, JSON, Codec, check_topic, decode, encode
from edgefleet.protocol.errors import (
    BundleError,
    DecodeError,
    EdgefleetError,
    ProtocolError,
    TopicError,
)
from edgefleet.protocol.messages import (
    AssignModel,
    CommandAck,
    Commit,
    CommitRange,
    DriftSketch,
    Envelope,
    Event,
    FeatureSketch,
    Health,
    InferenceBatch,
    InferenceRecord,
    Message,
    ReadingBatch,
    ReadingRecord,
    SetConfig,
    StartTraining,
    Status,
)
from edgefleet.protocol.topics import Kind, Topic

PROTOCOL_VERSION = "v1"

__all__ = [
    "BINARY",
    "JSON",
    "PROTOCOL_VERSION",
    "AssignModel",
    "BundleError",
    "Codec",
    "CommandAck",
    "Commit",
    "CommitRange",
    "DecodeError",
    "DriftSketch",
    "EdgefleetError",
    "Envelope",
    "Event",
    "FeatureSketch",
    "Health",
    "InferenceBatch",
    "InferenceRecord",
    "Kind",
    "Message",
    "ProtocolError",
    "ReadingBatch",
    "ReadingRecord",
    "SetConfig",
    "StartTraining",
    "Status",
    "Topic",
    "TopicError",
    "check_topic",
    "decode",
    "encode",
]
