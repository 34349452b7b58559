"""Training samples: the model inputs the agent keeps in its outbox for federated training."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np
import numpy.typing as npt

from edgefleet.edge.fl.buffer import encode_sample
from edgefleet.edge.fl.config import FlConfig
from edgefleet.edge.outbox import Outbox


class TrainingSamples:
    """Keeps the newest model input every ``sample_every_windows`` windows (or per drift sketch).

    Only where federated learning is enabled; rows go to the outbox's ``training_samples``
    table on its own writer thread, where :class:`~edgefleet.edge.fl.buffer.TrainingBuffer`
    reads them for the ClientApp.
    """

    def __init__(
        self,
        cfg: FlConfig,
        outbox: Callable[[], Outbox | None],
        *,
        db_executor: Executor,
        clock: Callable[[], float],
    ) -> None:
        self.cfg = cfg
        self._outbox = outbox
        self._db_executor = db_executor
        self._clock = clock
        self._windows = 0

    def count(
        self,
        model: str,
        x: npt.NDArray[np.float32] | None,
        windows: int,
        sketched_at: float | None,
    ) -> None:
        """``windows`` more were inferred; ``sketched_at`` is when a drift sketch just closed."""
        self._windows += windows
        every = self.cfg.sample_every_windows
        if not every:
            # No interval of its own: one sample per drift sketch, stamped with its end.
            if sketched_at is not None:
                self.keep(model, x, sketched_at)
            return
        if self._windows >= every:
            self._windows = 0
            self.keep(model, x, self._clock())

    def keep(self, model: str, x: npt.NDArray[np.float32] | None, t: float) -> None:
        """Keep ``x``, the newest input of ``model``, for federated training.

        Keyed by model *name*, as the ClientApp reads it (``TrainingBuffer.load(model=...)``):
        a new version of the model keeps training on what the old one saw. Bytes are
        little-endian float32 (``encode_sample``), whatever the device's byte order.
        """
        box = self._outbox()
        if x is None or box is None or not self.cfg.enabled:
            return
        data, _ = encode_sample(x.reshape(-1))
        asyncio.get_running_loop().run_in_executor(
            self._db_executor, box.add_training_sample, t, model, data, None
        )
