"""One valid example of every message type: for the docs, golden files, the demo and tests."""

from __future__ import annotations

from typing import Any

from edgefleet.protocol import topics
from edgefleet.protocol.messages import (
    AssignModel,
    CommandAck,
    Commit,
    CommitRange,
    DeviceProfile,
    DriftSketch,
    Envelope,
    Event,
    FeatureSketch,
    Health,
    InferenceBatch,
    InferenceRecord,
    McuActuator,
    McuCommand,
    ReadingBatch,
    ReadingRecord,
    SetConfig,
    StartTraining,
    Status,
)

FLEET = "demo"
DEVICE = "pump-007"
BOOT = "b7f3a1c29e4d5f60"
CLOUD = "cloud"
CLOUD_BOOT = "c0ffee0000000001"
T0 = 1_790_000_000.0


def examples(
    device: str = DEVICE, boot_id: str = BOOT, t0: float = T0
) -> list[tuple[str, Envelope]]:
    """``(topic, message)`` for one message of every schema, in a plausible order."""
    d: dict[str, Any] = {"device_id": device, "boot_id": boot_id}
    c: dict[str, Any] = {"device_id": CLOUD, "boot_id": CLOUD_BOOT}
    f = FLEET
    return [
        (
            topics.status(f, device),
            Status(
                **d,
                seq=0,
                sent_at=t0,
                state="online",
                agent_version="0.1.0",
                model="vibration-anomaly",
                model_version="1.0.0",
                reason="start",
                profile=DeviceProfile(
                    channels=["ax", "ay", "az"],
                    sample_rate_hz=400.0,
                    runtimes=["litert", "onnx"],
                    task="anomaly",
                    labels=[],
                ),
            ),
        ),
        (
            topics.telemetry(f, device, "health"),
            Health(
                **d,
                seq=1,
                sent_at=t0 + 10,
                uptime_s=10.2,
                agent_version="0.1.0",
                model="vibration-anomaly",
                model_version="1.0.0",
                cpu_percent=12.5,
                mem_rss_mb=48.3,
                mem_available_mb=301.0,
                temperature_c=51.2,
                throttled=0,
                inferences=98,
                latency_ms_p50=0.05,
                latency_ms_p95=0.08,
                latency_ms_p99=0.11,
                outbox_depth=3,
                outbox_drops=0,
            ),
        ),
        (
            topics.telemetry(f, device, "inference"),
            InferenceBatch(
                **d,
                seq=2,
                sent_at=t0 + 10.5,
                model="vibration-anomaly",
                model_version="1.0.0",
                records=[
                    InferenceRecord(
                        seq=2,
                        t=t0 + 10.0,
                        outputs=[0.012],
                        label="normal",
                        score=0.012,
                        latency_ms=0.05,
                    ),
                    InferenceRecord(
                        seq=3,
                        t=t0 + 10.16,
                        outputs=[0.931],
                        label="anomaly",
                        score=0.931,
                        latency_ms=0.05,
                    ),
                ],
            ),
        ),
        (
            topics.telemetry(f, device, "accel"),
            ReadingBatch(
                **d,
                seq=4,
                sent_at=t0 + 10.6,
                channels=["ax", "ay", "az"],
                records=[
                    ReadingRecord(seq=4, t=t0 + 10.5, values=[0.01, -0.02, 0.98]),
                    ReadingRecord(seq=5, t=t0 + 10.5025, values=[0.03, -0.01, 1.01]),
                ],
            ),
        ),
        (
            topics.telemetry(f, device, "drift"),
            DriftSketch(
                **d,
                seq=6,
                sent_at=t0 + 60,
                model="vibration-anomaly",
                model_version="1.0.0",
                window_start=t0,
                window_end=t0 + 60,
                features=[
                    FeatureSketch(
                        name="ax",
                        count=24000,
                        mean=0.001,
                        std=0.07,
                        min=-0.25,
                        max=0.26,
                        bin_edges=[-0.3, -0.1, 0.1, 0.3],
                        counts=[1900, 20100, 2000],
                    )
                ],
            ),
        ),
        (
            topics.event(f, device, "model-swap"),
            Event(
                **d,
                seq=7,
                sent_at=t0 + 61,
                kind="model-swap",
                level="info",
                message="activated vibration-anomaly@1.1.0 in slot b",
                data={"from": "1.0.0", "to": "1.1.0", "slot": "b"},
            ),
        ),
        (
            topics.command(f, device, "assign-model"),
            AssignModel(
                **c,
                seq=1,
                sent_at=t0 + 30,
                command_id="a1b2c3d4",
                model="vibration-anomaly",
                version="1.1.0",
                url="http://cloud.local:8080/api/models/vibration-anomaly/1.1.0/bundle",
                sha256="9ebc158178f06d8e5ffc5a8005cdb7a94f3ccb7fa345b73518bf9adc809d3db4",
                size=48213,
                runtime="litert",
            ),
        ),
        (
            topics.command_ack(f, device, "assign-model"),
            CommandAck(
                **d,
                seq=8,
                sent_at=t0 + 62,
                command_id="a1b2c3d4",
                command="assign-model",
                status="succeeded",
                data={"model": "vibration-anomaly", "version": "1.1.0"},
            ),
        ),
        (
            topics.command(f, topics.BROADCAST, "set-config"),
            SetConfig(
                **c,
                seq=2,
                sent_at=t0 + 70,
                command_id="e5f6a7b8",
                values={"telemetry.health_interval_s": 30},
            ),
        ),
        (
            topics.command(f, device, "start-training"),
            StartTraining(
                **c,
                seq=3,
                sent_at=t0 + 80,
                command_id="c9d0e1f2",
                model="vibration-anomaly",
                superlink="cloud.local:9092",
                rounds=3,
                deadline_s=120.0,
            ),
        ),
        (
            topics.command(f, device, "mcu"),
            McuCommand(
                **c,
                seq=5,
                sent_at=t0 + 90,
                command_id="d3e4f5a6",
                action=McuActuator(index=1, value=0.75),
            ),
        ),
        (
            topics.command(f, device, "commit"),
            Commit(**c, seq=4, sent_at=t0 + 11, ranges=[CommitRange(BOOT, 1, 3)]),
        ),
    ]
