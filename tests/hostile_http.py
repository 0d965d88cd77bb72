"""A loopback HTTP server whose answers the tests script: odd headers, slow or huge bodies,
redirects. Plain helper (not a fixture) shared by the hostile-feed and SSRF tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RSS_HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0"><channel>'
            "<title>{title}</title><link>https://hostile.example/</link><description>x</description>")
RSS_TAIL = "</channel></rss>"


def rss(title: str, items: list[str]) -> bytes:
    return (RSS_HEAD.format(title=title) + "".join(items) + RSS_TAIL).encode()


def item(title: str, link: str, guid: str | None = None, extra: str = "") -> str:
    guid_xml = f'<guid isPermaLink="false">{guid}</guid>' if guid else ""
    return f"<item><title>{title}</title><link>{link}</link>{guid_xml}{extra}</item>"


class Answer:
    """What one path answers: status, headers, body (bytes), and a delay before answering."""

    def __init__(self, body: bytes = b"", status: int = 200, headers: dict | None = None,
                 delay: float = 0.0, trickle: float = 0.0):
        self.body, self.status, self.headers = body, status, headers or {}
        self.delay, self.trickle = delay, trickle


class HostileServer:
    def __init__(self, host: str = "127.0.0.1"):
        self.routes: dict[str, Answer | Callable[[], Answer]] = {}
        self.requests: list[tuple[str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (http.server's naming)
                server.requests.append((self.path, dict(self.headers)))
                answer = server.routes.get(self.path, Answer(b"", 404))
                if callable(answer):
                    answer = answer()
                time.sleep(answer.delay)
                try:
                    self.send_response(answer.status)
                    headers = {"Content-Type": "application/rss+xml; charset=UTF-8",
                               "Content-Length": str(len(answer.body)), **answer.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if answer.trickle:
                        for byte in answer.body:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(answer.trickle)
                    else:
                        self.wfile.write(answer.body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: expected
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
