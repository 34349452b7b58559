"""Versioned schema migrations, written once for both SQL dialects.

Each migration is applied in its own transaction and recorded in ``schema_migrations``; a
database already past the newest version this build knows is refused (``SchemaTooNew``).
Tokens in braces are replaced per dialect (``Dialect``); never edit a released migration,
add a new one.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.cloud.store.base import RECORD_COLUMNS


@dataclass(frozen=True, slots=True)
class Dialect:
    """Type names and placeholder style of one SQL engine."""

    name: str
    serial_pk: str
    real: str
    bigint: str
    blob: str
    placeholder: str

    def render(self, sql: str) -> str:
        """Substitute the dialect's tokens in a migration statement."""
        return (
            sql.replace("{serial_pk}", self.serial_pk)
            .replace("{real}", self.real)
            .replace("{bigint}", self.bigint)
            .replace("{blob}", self.blob)
        )


SQLITE = Dialect("sqlite", "INTEGER PRIMARY KEY AUTOINCREMENT", "REAL", "INTEGER", "BLOB", "?")
POSTGRES = Dialect("postgres", "BIGSERIAL PRIMARY KEY", "DOUBLE PRECISION", "BIGINT", "BYTEA", "%s")

_TEXT = {
    "device_id",
    "boot_id",
    "agent_version",
    "model",
    "model_version",
    "label",
    "stream",
    "kind",
    "level",
    "message",
    "command_id",
    "command",
    "status",
    "reason",
    "detail",
}
_INT = {"seq", "throttled", "inferences", "outbox_depth", "outbox_drops"}


def _column_type(name: str) -> str:
    if name in _TEXT or name in {"outputs", "channels", "samples", "features", "data"}:
        return "TEXT"
    if name in _INT:
        return "{bigint}"
    return "{real}"


def _record_table(table: str) -> list[str]:
    cols = ",\n  ".join(
        f"{c} {_column_type(c)}{' NOT NULL' if c in ('device_id', 'boot_id', 'seq') else ''}"
        for c in RECORD_COLUMNS[table]
    )
    # The unique constraint IS the dedupe: delivery is at-least-once, storage exactly-once.
    return [
        f"CREATE TABLE {table} (\n  {cols},\n  PRIMARY KEY (device_id, boot_id, seq)\n)",
        f"CREATE INDEX {table}_device_t ON {table} (device_id, t)",
        f"CREATE INDEX {table}_received ON {table} (received_at)",
    ]


_V1: list[str] = [
    *(s for table in RECORD_COLUMNS for s in _record_table(table)),
    """CREATE TABLE devices (
  device_id TEXT PRIMARY KEY,
  fleet TEXT NOT NULL,
  online {bigint} NOT NULL DEFAULT 0,
  status_reason TEXT,
  first_seen {real} NOT NULL,
  last_seen {real} NOT NULL,
  boot_id TEXT,
  agent_version TEXT NOT NULL DEFAULT '',
  model TEXT,
  model_version TEXT,
  tags TEXT NOT NULL DEFAULT '[]',
  health_at {real},
  uptime_s {real},
  cpu_percent {real},
  mem_rss_mb {real},
  mem_available_mb {real},
  temperature_c {real},
  throttled {bigint},
  inferences {bigint},
  latency_ms_p50 {real},
  latency_ms_p95 {real},
  latency_ms_p99 {real},
  outbox_depth {bigint},
  outbox_drops {bigint}
)""",
    "CREATE INDEX devices_fleet ON devices (fleet)",
    """CREATE TABLE quarantine (
  id {serial_pk},
  received_at {real} NOT NULL,
  reason TEXT NOT NULL,
  topic TEXT NOT NULL,
  device_id TEXT,
  detail TEXT NOT NULL,
  payload_size {bigint} NOT NULL,
  payload_excerpt {blob} NOT NULL
)""",
    "CREATE INDEX quarantine_received ON quarantine (received_at)",
    "CREATE INDEX quarantine_device ON quarantine (device_id, received_at)",
    """CREATE TABLE models (
  name TEXT NOT NULL,
  version TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  size {bigint} NOT NULL,
  runtime TEXT NOT NULL,
  key_id TEXT NOT NULL,
  description TEXT NOT NULL,
  metrics TEXT NOT NULL,
  lineage TEXT NOT NULL,
  manifest TEXT NOT NULL,
  created_at {real} NOT NULL,
  uploaded_at {real} NOT NULL,
  PRIMARY KEY (name, version)
)""",
    """CREATE TABLE assignments (
  id TEXT PRIMARY KEY,
  fleet TEXT NOT NULL,
  model TEXT NOT NULL,
  version TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  size {bigint} NOT NULL,
  url TEXT NOT NULL,
  selector_kind TEXT NOT NULL,
  selector TEXT NOT NULL,
  created_at {real} NOT NULL,
  rollout_id TEXT,
  wave {bigint} NOT NULL DEFAULT 0
)""",
    "CREATE INDEX assignments_rollout ON assignments (rollout_id, wave)",
    """CREATE TABLE assignment_targets (
  assignment_id TEXT NOT NULL REFERENCES assignments (id),
  device_id TEXT NOT NULL,
  state TEXT NOT NULL,
  reason TEXT,
  detail TEXT,
  updated_at {real} NOT NULL,
  PRIMARY KEY (assignment_id, device_id)
)""",
]

# Claim tokens and device certificates (edgefleet.cloud.identity): only hashes of tokens are
# kept; a device keeps every certificate it was issued, so the CRL can list each revoked one.
_IDENTITY: list[str] = [
    """CREATE TABLE claim_tokens (
  token_hash TEXT PRIMARY KEY,
  fleet TEXT NOT NULL,
  tags TEXT NOT NULL,
  uses_max {bigint} NOT NULL,
  uses_left {bigint} NOT NULL,
  expires_at {real} NOT NULL,
  created_at {real} NOT NULL,
  created_by TEXT NOT NULL
)""",
    """CREATE TABLE identities (
  serial TEXT PRIMARY KEY,
  device_id TEXT NOT NULL,
  fleet TEXT NOT NULL,
  state TEXT NOT NULL,
  not_before {real} NOT NULL,
  not_after {real} NOT NULL,
  public_key TEXT NOT NULL,
  cert TEXT NOT NULL,
  node_public_key TEXT NOT NULL,
  claim_hash TEXT,
  successor TEXT,
  created_at {real} NOT NULL,
  revoked_at {real}
)""",
    "CREATE INDEX identities_device ON identities (device_id, created_at)",
]

# (version, description, statements); append only.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "records, devices, quarantine, models, assignments", _V1),
    (2, "devices.status_at orders statuses across boots", [
        "ALTER TABLE devices ADD COLUMN status_at {real}",
    ]),
    (3, "devices.profile: what a device offers a model (compatibility checks)", [
        "ALTER TABLE devices ADD COLUMN profile TEXT",
    ]),
    (4, "device identities (certificates) and claim tokens", _IDENTITY),
    (5, "record_keys: the per-device key that MACs a device's records (edgefleet.cloud.trust)", [
        """CREATE TABLE record_keys (
  device_id TEXT PRIMARY KEY,
  record_key {blob} NOT NULL,
  created_at {real} NOT NULL
)""",
    ]),
]  # fmt: skip
LATEST = MIGRATIONS[-1][0]
