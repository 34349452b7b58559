"""Everything a federated run needs: one frozen value, written as JSON for the ServerApp."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgefleet.cloud.fl.errors import FlSettingsError

StrategyName = Literal["fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "krum"]
DpKind = Literal["none", "server-fixed", "server-adaptive", "local"]
STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "krum")
DP_KINDS: tuple[str, ...] = ("none", "server-fixed", "server-adaptive", "local")


@dataclass(frozen=True, slots=True)
class DpSettings:
    """Differential privacy: Flower's server-side clipping wrappers, or ``LocalDpMod`` on clients.

    ``local``: every client clips its update to L2 norm ``clipping_norm`` and adds Gaussian
    noise of standard deviation ``noise_multiplier * clipping_norm`` to every parameter.
    In ``LocalDpMod``'s terms (std = sensitivity * sqrt(2 ln(1.25/delta)) / epsilon):
    sensitivity = clipping_norm, delta = ``delta``, epsilon = sqrt(2 ln(1.25/delta)) /
    noise_multiplier (per round and client; no accounting across rounds).
    """

    kind: DpKind = "none"
    noise_multiplier: float = 0.1
    clipping_norm: float = 5.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.kind not in DP_KINDS:
            raise FlSettingsError(f"--dp must be one of {', '.join(DP_KINDS)}")
        if self.noise_multiplier < 0 or self.clipping_norm <= 0:
            raise FlSettingsError("DP needs noise >= 0 and a positive clipping norm")
        if not 0 < self.delta < 1:
            raise FlSettingsError("the DP delta must lie between 0 and 1")

    @property
    def epsilon(self) -> float:
        """Local DP's epsilon for one client's update in one round (inf without noise)."""
        if self.noise_multiplier == 0:
            return math.inf
        return math.sqrt(2 * math.log(1.25 / self.delta)) / self.noise_multiplier

    def client_config(self) -> dict[str, float]:
        """What a client needs for ``LocalDpMod`` (round config keys; empty unless local)."""
        if self.kind != "local":
            return {}
        return {
            "dp-clipping-norm": self.clipping_norm,
            "dp-sensitivity": self.clipping_norm,
            "dp-epsilon": self.epsilon,
            "dp-delta": self.delta,
        }

    def lineage(self) -> dict[str, str | float]:
        """The DP settings as the bundle's lineage records them (empty without DP)."""
        if self.kind == "none":
            return {}
        out: dict[str, str | float] = {
            "kind": self.kind,
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
        }
        if self.kind == "local":
            out["delta"] = self.delta
            if math.isfinite(self.epsilon):
                out["epsilon"] = self.epsilon
        return out


@dataclass(frozen=True, slots=True)
class RunSettings:
    """One federated run: model, rounds, quorum, strategy, local training and file locations.

    ``round_timeout_s`` is the round deadline: stragglers that miss it are left out of the
    round. ``quorum_timeout_s`` bounds the wait for ``min_clients`` connected SuperNodes; a
    round below quorum leaves the model unchanged and is recorded as skipped. ``parent``
    (``name@version``) is the registered version the run starts from: the hand-off judges
    the result against it and records it as the lineage parent (None: the current version).
    """

    model: str
    rounds: int
    min_clients: int
    workdir: str
    strategy: StrategyName = "fedavg"
    dp: DpSettings = field(default_factory=DpSettings)
    epochs: int = 1
    lr: float = 0.05
    max_samples: int = 1000
    seed: int = 0
    round_timeout_s: float = 120.0
    quorum_timeout_s: float = 60.0
    proximal_mu: float = 0.01
    trim_beta: float = 0.2
    num_malicious: int = 0
    data_dir: str = ""
    parent: str | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise FlSettingsError(f"--strategy must be one of {', '.join(STRATEGIES)}")
        if self.rounds < 1 or self.min_clients < 1:
            raise FlSettingsError("--rounds and --min-clients must be at least 1")
        if self.epochs < 1 or self.lr <= 0:
            raise FlSettingsError("local epochs must be >= 1 and the learning rate > 0")
        if self.round_timeout_s <= 0 or self.quorum_timeout_s < 0:
            raise FlSettingsError("the round deadline must be positive")
        if self.strategy == "krum" and self.min_clients < 2 * self.num_malicious + 3:
            raise FlSettingsError("krum needs at least 2 * malicious + 3 clients per round")
        # Flower's adaptive clipping also noises the clipped count, with std min_clients / 20
        # by default, and refuses (ValueError inside the ServerApp) a noise multiplier that is
        # not below twice that: refuse it here, before a run starts.
        ceiling = self.min_clients / 10
        noise = self.dp.noise_multiplier
        if self.dp.kind == "server-adaptive" and noise > 0 and noise >= ceiling:
            raise FlSettingsError(
                f"server-adaptive DP with {self.min_clients} clients per round needs a noise "
                f"multiplier below {ceiling:g} (min_clients / 10); lower --dp-noise or raise "
                "--min-clients"
            )

    @property
    def root(self) -> Path:
        """The run's directory (trainable model, initial weights, holdout, results)."""
        return Path(self.workdir)

    @property
    def trainable_path(self) -> Path:
        """The trainable ``.tflite`` the clients train."""
        return self.root / "trainable.tflite"

    @property
    def initial_path(self) -> Path:
        """The initial weights (``.npz``, Keras order)."""
        return self.root / "initial.npz"

    @property
    def holdout_path(self) -> Path:
        """The cloud's holdout data (``x``, ``y``) evaluated after every round."""
        return self.root / "holdout.npz"

    @property
    def spec_path(self) -> Path:
        """The trainable spec (JSON) the server's numpy evaluation uses."""
        return self.root / "spec.json"

    @property
    def rounds_path(self) -> Path:
        """One JSON line per finished or skipped round."""
        return self.root / "rounds.jsonl"

    @property
    def result_path(self) -> Path:
        """The final aggregated weights (``.npz``), written after the last round."""
        return self.root / "result.npz"

    @property
    def settings_path(self) -> Path:
        """Where these settings are written for the ServerApp process."""
        return self.root / "settings.json"

    def write(self) -> Path:
        """Write the settings as JSON into the run's directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings_path.write_text(json.dumps(asdict(self), indent=2))
        return self.settings_path

    @classmethod
    def read(cls, path: Path) -> RunSettings:
        """Read settings written by :meth:`write`."""
        try:
            data: dict[str, Any] = json.loads(Path(path).read_text())
            data["dp"] = DpSettings(**data.get("dp", {}))
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise FlSettingsError(f"cannot read run settings {path}: {exc}") from None
