"""Run one agent in this process until SIGTERM/SIGINT: shared by the CLI and the lean launcher."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import msgspec

from edgefleet.edge.config import AgentConfig, load_config


def device_config(cfg: AgentConfig) -> AgentConfig:
    """Resolve device defaults: ``model.verify = "auto"`` becomes ``"subprocess"``."""
    if cfg.model.verify != "auto":
        return cfg
    return msgspec.structs.replace(
        cfg, model=msgspec.structs.replace(cfg.model, verify="subprocess")
    )


def run_agent(config: str | Path, log_level: str = "info") -> None:
    """Load ``config``, then serve until a signal asks for a clean shutdown."""
    cfg = device_config(load_config(Path(config)))
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from edgefleet.edge.agent import Agent

    async def main() -> None:
        agent = Agent(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run()

    asyncio.run(main())
