"""A tiny HTTP file server with Range support, for model downloads in tests.

The standard library's ``http.server`` ignores ``Range``; the agent resumes downloads with it,
so this handler answers ``206 Partial Content``. ``fail_after`` cuts the first response short
to exercise resume.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeServer:
    """Serves files from ``root`` on a loopback port in a background thread."""

    def __init__(self, root: Path, *, fail_after: int | None = None) -> None:
        self.root = Path(root)
        self.fail_after = fail_after
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a: object) -> None:
                return

            def do_GET(self) -> None:
                path = server.root / self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.fail_after is not None:
                    cut, server.fail_after = server.fail_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        """URL of a file under ``root``."""
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()
