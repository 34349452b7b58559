"""The lean device launcher: ``python -m edgefleet.edge --config FILE`` / ``edgefleet-agent``.

``edgefleet agent run`` goes through the root CLI (typer, click, rich), which a Raspberry Pi
pays for in resident memory for as long as the agent runs. This launcher imports only what
the running agent needs and sets the device defaults below before numpy loads.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

# One BLAS/OpenMP thread: the agent's numpy work is tiny per chunk, and every extra OpenBLAS
# thread costs a thread plus its buffers. An operator's own setting wins (setdefault).
DEVICE_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def exec_launcher(config: str, log_level: str = "info") -> NoReturn:
    """Replace this process (same pid) with the lean launcher for ``config``."""
    sys.stdout.flush()
    sys.stderr.flush()
    for key, value in DEVICE_ENV.items():
        os.environ.setdefault(key, value)
    argv = [sys.executable, "-m", "edgefleet.edge", "--config", config, "--log-level", log_level]
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter, no shell


def main(argv: list[str] | None = None) -> int:
    """Run the agent from a config file until SIGTERM/SIGINT; returns the exit status."""
    for key, value in DEVICE_ENV.items():
        os.environ.setdefault(key, value)
    import argparse

    parser = argparse.ArgumentParser(
        prog="edgefleet-agent",
        description="Run the edgefleet device agent (the lean form of `edgefleet agent run`).",
    )
    parser.add_argument("--config", "-c", required=True, help="the agent's TOML config file")
    parser.add_argument(
        "--log-level", default="info", help="debug, info, warning or error (default: info)"
    )
    args = parser.parse_args(argv)

    from edgefleet.edge.runner import run_agent
    from edgefleet.protocol.errors import EdgefleetError

    try:
        run_agent(args.config, args.log_level)
    except EdgefleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0
