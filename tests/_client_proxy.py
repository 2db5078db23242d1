"""A loopback HTTP reverse proxy for client tests and the upload bench: it counts the request body bytes
it forwarded to Put Block (`block_bytes`, what the server received, and `blocks_without_md5`), waits
`delay` seconds each way (a network's latency), and fails a share `fail` of requests: a 503 ServerBusy
answer, a reset connection (before forwarding; for GET and PUT also after, the answer lost), or a download
cut half way (and the next `cut_next` downloads whatever `fail` says). POSTs are never reset after
forwarding: a client cannot know whether a lost create_upload_session made a job."""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1024 * 1024


class Proxy:
    def __init__(self, delay: float = 0.0, fail: float = 0.0, seed: int = 0) -> None:
        self.delay, self.fail, self.target = delay, fail, 0
        self.cut_next = 0  # downloads to cut half way whatever `fail` says
        self.block_bytes = self.blocks_without_md5 = 0
        self.faults: dict[str, int] = {}
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client that went away (killed, reset)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fault(self, method: str, path: str) -> str | None:
        """None, or the fault this request gets: "503", "reset", "reset-after" or "cut"."""
        download = method == "GET" and "/blob/" in path
        with self._lock:
            if download and self.cut_next > 0:
                self.cut_next -= 1
                kind = "cut"
            elif self.fail <= 0 or self._random.random() >= self.fail:
                return None
            else:
                kinds = ["503", "reset"] + (["reset-after"] if method in ("GET", "PUT") else [])
                kind = "cut" if download and self._random.random() < 0.5 else self._random.choice(kinds)
            self.faults[kind] = self.faults.get(kind, 0) + 1
            return kind

    def counted(self, path: str, length: int, md5: bool) -> None:
        if "comp=block" in path and "comp=blocklist" not in path:
            with self._lock:
                self.block_bytes += length
                self.blocks_without_md5 += not md5

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(proxy: Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        upstream: http.client.HTTPConnection | None = None

        def log_message(self, *args) -> None:
            pass

        def _forward(self) -> None:
            fault = proxy.fault(self.command, self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if fault == "reset":
                return self._reset()
            if fault == "503":
                self.send_response(503)
                self.send_header("x-ms-error-code", "ServerBusy")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            time.sleep(proxy.delay)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            response = self._send_upstream(body, headers)
            if response.status == 201 and body:
                proxy.counted(self.path, len(body), "Content-MD5" in self.headers)
            time.sleep(proxy.delay)
            if fault == "reset-after":
                response.read()
                return self._reset()
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in ("connection", "transfer-encoding", "keep-alive", "date", "server"):
                    self.send_header(name, value)
            self.end_headers()
            sent, total = 0, int(response.getheader("Content-Length") or 0)
            while chunk := response.read(CHUNK):
                if fault == "cut" and sent + len(chunk) > total // 2 and total > 2:
                    self.wfile.write(chunk[: max(total // 2 - sent, 1)])
                    self.wfile.flush()
                    response.read()
                    return self._reset()
                self.wfile.write(chunk)
                sent += len(chunk)

        def _send_upstream(self, body: bytes | None, headers: dict) -> http.client.HTTPResponse:
            for attempt in (1, 2):  # a kept-alive upstream connection the server closed: open a new one
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection("127.0.0.1", proxy.target, timeout=600)
                try:
                    self.upstream.request(self.command, self.path, body=body, headers=headers)
                    return self.upstream.getresponse()
                except (http.client.RemoteDisconnected, ConnectionError):
                    self.upstream.close()
                    self.upstream = None
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        def _reset(self) -> None:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            if self.upstream is not None:
                self.upstream.close()
                self.upstream = None

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    return Handler
