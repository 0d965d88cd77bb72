"""Helpers of the admin browser test: the real app served over HTTP in a thread."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"


@contextmanager
def serve(app, port: int):
    """The app on http://127.0.0.1:<port> (werkzeug, threaded) until the block ends."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="admin-browser-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def write_subscribers_csv(path: Path, count: int) -> Path:
    """A CSV in our export layout: `count` people, half Swedish, half English, all topics."""
    lines = ["email,name,language,topics"]
    for n in range(count):
        lines.append(f"lasare{n:04d}@example.se,Läsare {n},{'sv' if n % 2 else 'en'},")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
