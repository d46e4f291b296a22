"""The HTTP plumbing shared by the emulators: loopback servers, routing, recording, faults.

Every emulator is a `ThreadingHTTPServer` bound to 127.0.0.1 on an ephemeral port,
speaking HTTP/1.1 with keep-alive (the clients pool connections). An emulator is an
`Api` object: it routes a parsed `Request` to a handler and returns a `Response`.
This module applies the fault decision before the handler runs, records every
request for the inspection endpoint, and closes every connection on `stop()` so
tests leave no threads behind.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from healthsync.connectors.sandbox.faults import FaultDecision, FaultInjector

LOOPBACK = "127.0.0.1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # filled by the router

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def args(self, name: str) -> list[str]:
        """A repeated or comma-separated query parameter (HubSpot sends `properties` both ways)."""
        out: list[str] = []
        for v in self.query.get(name, []):
            out.extend(p for p in v.split(",") if p)
        return out

    def json(self) -> Any:
        if not self.body:
            return None
        return json.loads(self.body.decode("utf-8"))

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8"), keep_blank_values=True).items()}


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> "Response":
        h = {"Content-Type": "application/json;charset=UTF-8"}
        h.update(headers or {})
        return cls(status, json.dumps(payload, separators=(",", ":")).encode("utf-8"), h)

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain;charset=UTF-8") -> "Response":
        return cls(status, text.encode("utf-8"), {"Content-Type": content_type})


class HttpError(Exception):
    """Raised by handlers to answer with an API-shaped error response."""

    def __init__(self, response: Response):
        super().__init__(response.status)
        self.response = response


Handler = Callable[[Request], Response]


class Router:
    """Method + regex routes; `endpoint` names are the templates the inspection counts use."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern, Handler, str]] = []

    def add(self, method: str, pattern: str, handler: Handler, endpoint: str | None = None) -> None:
        self._routes.append((method, re.compile("^" + pattern + "$"), handler, endpoint or f"{method} {pattern}"))

    def match(self, method: str, path: str) -> tuple[Handler | None, str, dict[str, str], bool]:
        """-> (handler, endpoint, params, path_known_for_other_method)."""
        known = False
        for m, rx, h, name in self._routes:
            mo = rx.match(path)
            if mo:
                if m == method:
                    return h, name, mo.groupdict(), True
                known = True
        return None, "", {}, known


@dataclass
class RequestRecord:
    seq: int
    api: str
    method: str
    path: str
    endpoint: str
    status: int  # 0 when the connection was dropped
    fault: str | None
    at: str


class Recorder:
    """Requests the emulators saw, for the inspection endpoint and for tests.

    Keeps the most recent `keep` requests (a long-running `sandbox serve` must not grow
    without bound); sequence numbers keep counting, so `since=` stays meaningful.
    """

    def __init__(self, keep: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._items: deque[RequestRecord] = deque(maxlen=keep)
        self._seq = 0

    def add(self, api: str, method: str, path: str, endpoint: str, status: int, fault: str | None, at: str) -> int:
        with self._lock:
            self._seq += 1
            self._items.append(RequestRecord(self._seq, api, method, path, endpoint, status, fault, at))
            return self._seq

    @property
    def last_seq(self) -> int:
        return self._seq

    def reset(self) -> None:
        with self._lock:
            self._items.clear()

    def summary(self, since: int = 0, api: str | None = None) -> dict:
        with self._lock:
            items = [r for r in self._items if r.seq > since and (api is None or r.api == api)]
        counts: dict[str, Counter] = {}
        for r in items:
            counts.setdefault(r.api, Counter())[r.endpoint] += 1
        return {
            "last_seq": self._seq,
            "counts": {a: dict(c) for a, c in counts.items()},
            "requests": [r.__dict__ for r in items],
        }


class Api:
    """Base of the three emulators: routing plus the hooks the server calls."""

    name = "api"
    write_methods = ("POST", "PUT", "PATCH", "DELETE")
    #: attributes that belong to the running process, not to the emulated world: never saved in a world
    #: snapshot (connectors/sandbox/world.py), and kept as they are when one is loaded. Subclasses add theirs
    #: (ports, rate-limit windows in monotonic time, query cursors, test hooks); everything else is the world.
    PROCESS_ATTRS: frozenset[str] = frozenset({"router", "clock", "faults", "lock"})

    def __init__(self, router: Router) -> None:
        self.router = router

    def world_state(self) -> dict[str, Any]:
        """What this emulator holds that a real service would keep across a restart (see PROCESS_ATTRS)."""
        return {k: v for k, v in vars(self).items() if k not in self.PROCESS_ATTRS}

    def restore_world_state(self, state: dict[str, Any]) -> None:
        """Take over a saved world (from `world_state`); the running process's own attributes stay."""
        vars(self).update({k: v for k, v in state.items() if k not in self.PROCESS_ATTRS})

    def fault_exempt(self, req: Request) -> bool:
        """Token endpoints are never faulted (a flaky login would make every test flaky)."""
        return False

    def is_write(self, req: Request) -> bool:
        return req.method in self.write_methods

    def fault_response(self, decision: FaultDecision) -> Response:
        raise NotImplementedError

    def not_found(self, req: Request, method_mismatch: bool) -> Response:
        raise NotImplementedError

    def finalize(self, req: Request, resp: Response) -> None:
        """Add headers every response carries (e.g. Sforce-Limit-Info)."""

    def dispatch(self, req: Request) -> tuple[Response, str]:
        handler, endpoint, params, known = self.router.match(req.method, req.path)
        if handler is None:
            return self.not_found(req, known), f"{req.method} (unknown)"
        req.params.update(params)
        try:
            resp = handler(req)
        except HttpError as e:
            resp = e.response
        return resp, endpoint

    def endpoint_of(self, req: Request) -> str:
        handler, endpoint, _, _ = self.router.match(req.method, req.path)
        return endpoint if handler else f"{req.method} (unknown)"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read /requests instead
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The `Date` header on the emulator clock: clients learn the server's time from it, as from a real API."""
        if timestamp is None:
            try:
                timestamp = datetime.fromisoformat(self.server.clock_now()).timestamp()
            except (TypeError, ValueError):
                pass
        return super().date_time_string(timestamp)

    def _serve(self) -> None:
        srv = self.server
        api: Api = srv.api
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        decision = FaultDecision()
        if srv.faults is not None and not api.fault_exempt(req):
            decision = srv.faults.decide(api.name, api.is_write(req))
        if decision.latency_s:
            time.sleep(decision.latency_s)
        at = srv.clock_now()
        if decision.action == "drop":
            srv.recorder.add(api.name, req.method, req.path, api.endpoint_of(req), 0, "drop", at)
            self._drop()
            return
        if decision.action in ("error", "429"):
            resp, endpoint = api.fault_response(decision), api.endpoint_of(req)
        else:
            try:
                resp, endpoint = api.dispatch(req)
            except Exception as e:  # an emulator bug must surface as a 500, not a hung client
                resp, endpoint = Response.json(500, [{"errorCode": "EMULATOR_BUG", "message": repr(e)}]), "bug"
                import traceback

                traceback.print_exc()
        if decision.action == "lost_response" and resp.status < 300:
            srv.recorder.add(api.name, req.method, req.path, endpoint, 0, "lost_response", at)
            self._drop()
            return
        api.finalize(req, resp)
        srv.recorder.add(api.name, req.method, req.path, endpoint, resp.status, decision.action, at)
        self.send_response(resp.status)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, api: Api, recorder: Recorder, faults: FaultInjector | None, clock_now: Callable[[], str],
                 tls: ssl.SSLContext | None) -> None:
        self.api, self.recorder, self.faults, self.clock_now, self.tls = api, recorder, faults, clock_now, tls
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__((LOOPBACK, 0), _Handler)

    def finish_request(self, request, client_address) -> None:
        # TLS handshake in the connection's own thread, so a slow client cannot stall accept()
        if self.tls is not None:
            try:
                request.settimeout(10)
                request = self.tls.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError):
                return
        with self._conns_lock:
            self._conns.add(request)
        try:
            super().finish_request(request, client_address)
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            with self._conns_lock:
                self._conns.discard(request)

    def close_all_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass


class EmulatorServer:
    """One API on one loopback port, served from a background thread until `stop()`."""

    def __init__(self, api: Api, recorder: Recorder, faults: FaultInjector | None, clock_now: Callable[[], str],
                 tls: ssl.SSLContext | None = None) -> None:
        self._server = _Server(api, recorder, faults, clock_now, tls)
        self.port = self._server.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"sandbox-{api.name}", daemon=True)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.port}"

    def start(self) -> "EmulatorServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.close_all_connections()
        self._server.server_close()
        self._thread.join(timeout=5)
