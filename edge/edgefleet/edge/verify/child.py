"""The verifier child: ``python -m edgefleet.edge.verify.child REQUEST``; answers one JSON line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgefleet.edge.verify.inprocess import InProcessVerifier
from edgefleet.protocol.errors import EdgefleetError


def main(argv: list[str]) -> int:
    """Answer ``{"ok": true, "key_id": ...}`` or ``{"ok": false, "error", "reason", "message"}``."""
    try:
        request = json.loads(argv[0])
        verifier = InProcessVerifier(request["keys"])
        if request["op"] == "stage":
            bundle = verifier.unpack_and_verify(Path(request["archive"]), Path(request["path"]))
        else:
            bundle = verifier.verify(Path(request["path"]))
        answer: dict[str, object] = {"ok": True, "key_id": bundle.key_id}
    except EdgefleetError as exc:
        answer = {
            "ok": False,
            "error": type(exc).__name__,
            "reason": exc.reason,
            "message": str(exc),
        }
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
