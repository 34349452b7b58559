"""What ``edgefleet agent check`` and ``status`` show: a dry inference pass and the stored state."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import msgspec

from edgefleet.edge.config import AgentConfig
from edgefleet.edge.delivery import Delivery
from edgefleet.edge.outbox import Outbox
from edgefleet.edge.pipeline import Pipeline, Result
from edgefleet.edge.runtime import load_runtime
from edgefleet.edge.sequencer import Sequencer
from edgefleet.edge.slots import Slots
from edgefleet.edge.sources import close_source, make_source
from edgefleet.edge.verify import Checked, Verifier, make_verifier
from edgefleet.protocol import topics
from edgefleet.protocol.codec import get_codec
from edgefleet.protocol.errors import ConfigError
from edgefleet.protocol.messages import InferenceBatch, InferenceRecord


async def dry_run(cfg: AgentConfig, windows: int = 3) -> list[str]:
    """Read, infer and encode ``windows`` results exactly as the agent would; send nothing."""
    src_cfg = cfg.source
    # A one-shot check must not wait forever for a serial port that is not plugged in.
    source = make_source(
        msgspec.structs.replace(
            src_cfg, realtime=False, open_timeout_s=src_cfg.open_timeout_s or 10.0
        )
    )
    trusted = make_verifier("process", cfg.model.trusted_keys)
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-check-"))
    try:
        bundle = _bundle(cfg, trusted, source.channels, tmp)
        runtime = load_runtime(
            bundle.path, bundle.manifest, override=cfg.model.runtime, threads=cfg.model.threads
        )
        pipe = Pipeline(runtime, bundle.manifest, source.channels, bins=cfg.drift.bins)
        lines = [
            f"model: {bundle.manifest.ref} ({runtime.name}, signed by {bundle.key_id})",
            f"source: {cfg.source.kind} {list(source.channels)} at {source.rate_hz:g} Hz",
        ]
        results: list[Result] = []
        while len(results) < windows:
            chunk = await source.read()
            if chunk is None:
                break
            results.extend(pipe.process(chunk.t0, chunk.samples, source.rate_hz))
        await close_source(source)
        if not results:
            raise ConfigError("the source produced no full window: check source settings")
        seq = Sequencer()
        records = [
            InferenceRecord(
                seq=seq.next(),
                t=r.t,
                outputs=r.outputs,
                label=r.label,
                score=r.score,
                latency_ms=r.latency_ms,
            )
            for r in results[:windows]
        ]
        msg = InferenceBatch(
            device_id=cfg.device.id,
            boot_id=seq.boot_id,
            seq=records[0].seq,
            sent_at=time.time(),
            model=pipe.model,
            model_version=pipe.model_version,
            records=records,
        )
        topic = topics.telemetry(cfg.device.fleet, cfg.device.id, "inference")
        lines.append(f"would publish to {topic} (QoS 1):")
        lines.append(get_codec(cfg.mqtt.codec).encode(msg).decode(errors="replace"))
        return lines
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bundle(cfg: AgentConfig, trusted: Verifier, channels: tuple[str, ...], tmp: Path) -> Checked:
    active = Slots(cfg.data_dir / "models").active_path() if cfg.data_dir.exists() else None
    if active is not None:
        return trusted.verify(active)
    if not cfg.model.bundle:
        raise ConfigError("no model: set model.bundle or assign one from the cloud first")
    # Stage the configured bundle into a scratch slot: check never touches the real slots.
    d = Delivery(cfg.delivery, Slots(tmp / "models"), trusted, channels, tmp / "downloads")
    return d.stage(Path(cfg.model.bundle)).bundle


def describe_state(cfg: AgentConfig) -> list[str]:
    """The outbox and model slots as the running (or stopped) agent left them."""
    lines = [f"device: {cfg.device.id} (fleet {cfg.device.fleet})"]
    path = cfg.outbox_path
    if path.exists():
        box = Outbox(path, readonly=True)
        try:
            st = box.stats()
        finally:
            box.close()
        lines.append(f"outbox: {path}")
        lines.append(f"  depth: {st.depth} records ({st.bytes} bytes) waiting for a commit")
        lines.append(f"  drops: {st.drops} (oldest records dropped because the outbox was full)")
        lines.append(f"  training samples: {st.training_samples}")
        for boot, last in list(st.boots.items())[-5:]:
            lines.append(f"  boot {boot}: last seq {last}")
    else:
        lines.append(f"outbox: {path} (not created yet)")
    slots = Slots(cfg.data_dir / "models") if cfg.data_dir.exists() else None
    active = slots.active() if slots else None
    if slots is None or active is None:
        lines.append("model: none installed")
    else:
        for slot in ("a", "b"):
            p = slots.path(slot) / "manifest.json"
            if p.exists():
                from edgefleet.protocol.manifest import decode_manifest

                m = decode_manifest(p.read_bytes())
                mark = "active" if slot == active else "previous"
                lines.append(f"model slot {slot} ({mark}): {m.ref} [{m.runtime}]")
    return lines
