"""``kafcel dashboard``: a local web page over ``kafcel status`` and the DLQ.

A standard-library HTTP server (no web framework) serves one self-contained page
(``dashboard.html``: no CDN, works offline) and a small JSON API:

- ``GET /api/status``: :func:`kafcel.ops.status.collect_status`, the very JSON that
  ``kafcel status --json`` prints (every lane's, with ``topics``); an error is
  ``{"error": ...}`` with status 503.
- ``GET /api/dlq?task=&error_class=&key=&since=&until=&limit=``: dead letters of every
  DLQ topic of the lanes, newest ``limit`` of those matching (globs for task and error
  class, exact key, times as ``kafcel dlq`` takes them: ISO 8601, ``now``, ``-15m``).
- ``POST /api/dlq/replay`` with ``{"records": [{"ref": "[DLQ_TOPIC:]P:O"}, or
  {"topic": dlq_topic, "partition": p, "offset": o}], "new_id": bool}`` (``topic`` may
  be left out when there is one DLQ topic): writes those dead letters back to the task
  topic each came from.

Replay is a write. The server binds 127.0.0.1 by default, refuses requests whose
``Host`` is not the address it serves (DNS rebinding) and writes only for a same-origin
JSON ``POST`` (a page of another site cannot make one without a CORS preflight, which is
never granted). Bound beyond loopback (``--host 0.0.0.0``) it refuses to start without a
token (``KAFCEL_DASHBOARD_TOKEN``), and with a token every write must carry it as
``Authorization: Bearer <token>`` (the page asks for it once per tab); reads stay open.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigError, KafcelError
from ..kafka.lanes import dlq_topics, lanes_of
from ..settings import Settings
from . import deadletters
from .status import collect_status

__all__ = ["DashboardServer", "make_server", "serve"]

log = logging.getLogger("kafcel.dashboard")

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_MAX_BODY = 1_048_576
_MAX_REPLAY = 1000
_DEFAULT_LIMIT = 200
_MAX_LIMIT = 10_000
# Several tabs polling every 2 s share one status read per this many seconds.
_STATUS_TTL_S = 1.0


def _page() -> bytes:
    return resources.files(__package__).joinpath("dashboard.html").read_bytes()


class _ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class DashboardServer(ThreadingHTTPServer):
    """The dashboard's HTTP server: ``serve_forever()`` it, ``shutdown()`` from elsewhere."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *, settings: Settings, host: str = "127.0.0.1", port: int = 8765) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"port must be 0 to 65535, got {port}")
        self.settings = settings
        self.token = settings.dashboard_token
        if host not in _LOOPBACK and not self.token:
            raise ConfigError(
                f"the dashboard would listen on {host}, beyond 127.0.0.1, where anyone who "
                "reaches it could replay dead letters: set KAFCEL_DASHBOARD_TOKEN (or "
                "--dashboard-token)"
            )
        self.page = _page()
        self._status_lock = threading.Lock()
        self._status: tuple[float, dict[str, Any]] | None = None
        self.replay_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def allowed_hosts(self) -> frozenset[str] | None:
        """Host names a request may name; None when bound to a non-loopback address."""
        bound = str(self.server_address[0])
        if bound not in _LOOPBACK:
            return None
        return _LOOPBACK | {bound}

    def status(self) -> dict[str, Any]:
        """collect_status, shared by requests arriving within ``_STATUS_TTL_S``."""

        with self._status_lock:
            now = time.monotonic()
            if self._status is not None and now - self._status[0] < _STATUS_TTL_S:
                return self._status[1]
            report = collect_status(self.settings)
            self._status = (time.monotonic(), report)
            return report


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "kafcel-dashboard"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- routing ---------------------------------------------------------------------

    def do_GET(self) -> None:
        routes: dict[str, Callable[[dict[str, list[str]]], Any]] = {
            "/api/status": lambda _: self.server.status(),
            "/api/dlq": self._dlq,
        }
        self._dispatch(routes)

    def do_POST(self) -> None:
        self._dispatch({"/api/dlq/replay": lambda _: self._replay()}, write=True)

    def _dispatch(
        self, routes: dict[str, Callable[[dict[str, list[str]]], Any]], *, write: bool = False
    ) -> None:
        parts = urlsplit(self.path)
        try:
            self._check_host()
            if write:
                self._check_write()
            if not write and parts.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
                return
            route = routes.get(parts.path)
            if route is None:
                raise _ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint: {parts.path}")
            body = route(parse_qs(parts.query))
            self._json(HTTPStatus.OK, body)
        except _ApiError as exc:
            self._json(exc.status, {"error": str(exc)})
        except ConfigError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except KafcelError as exc:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        except Exception as exc:
            # Never a traceback page: the page shows this line, the log keeps the rest.
            log.exception("dashboard: %s %s failed", self.command, parts.path)
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"{type(exc).__name__}: {exc}"})

    def _check_host(self) -> None:
        allowed = self.server.allowed_hosts()
        if allowed is None:
            return
        host = (self.headers.get("Host") or "").strip()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]")
        if name.lower() not in allowed:
            raise _ApiError(HTTPStatus.FORBIDDEN, f"Host {host!r} is not served here")

    def _check_write(self) -> None:
        token = self.server.token
        if token:
            given = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise _ApiError(HTTPStatus.UNAUTHORIZED, "replay needs the dashboard's token")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host"):
            raise _ApiError(HTTPStatus.FORBIDDEN, f"cross-origin write from {origin} refused")

    # -- responses -------------------------------------------------------------------

    def _send(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src 'self' data:",
        )
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, doc: Any) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    # -- DLQ -------------------------------------------------------------------------

    def _dlq(self, query: dict[str, list[str]]) -> dict[str, Any]:
        def arg(name: str) -> str | None:
            value = (query.get(name) or [""])[0].strip()
            return value or None

        names = ("task", "error_class", "key", "since", "until")
        flt = deadletters.DlqFilter.parse(**{name: arg(name) for name in names})
        limit = _limit(arg("limit"))
        settings = self.server.settings
        lanes = lanes_of(settings)
        records = deadletters.read_dead_letters(settings, flt, limit=limit, lanes=lanes)
        topics = dlq_topics(lanes)
        return {
            "topic": ",".join(topics),
            "topics": topics,
            "limit": limit,
            "records": [r.as_dict() for r in reversed(records)],  # newest first
        }

    def _replay(self) -> dict[str, Any]:
        doc = self._body()
        refs = _refs(doc.get("records"))
        new_id = doc.get("new_id", False)
        if not isinstance(new_id, bool):
            raise ConfigError('"new_id" must be true or false')
        settings = self.server.settings
        with self.server.replay_lock:
            lanes = lanes_of(settings)
            topics = dlq_topics(lanes)
            wanted = {deadletters.resolve_ref(ref, topics): ref for ref in refs}
            found = [
                r
                for r in deadletters.read_dead_letters(settings, lanes=lanes)
                if (r.topic, r.partition, r.offset) in wanted
            ]
            result = deadletters.replay_dead_letters(settings, found, new_id=new_id, lanes=lanes)
        report = result.as_dict()
        report["task_ids"] = [entry["task_id"] for entry in report["submitted"]]
        present = {(r.topic, r.partition, r.offset) for r in found}
        report["missing"] = [ref for place, ref in wanted.items() if place not in present]
        report["new_id"] = new_id
        log.info(
            "dashboard: replayed %d dead letter(s), new_id=%s", len(report["task_ids"]), new_id
        )
        return report

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise _ApiError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from exc
        if length <= 0 or length > _MAX_BODY:
            raise _ApiError(HTTPStatus.BAD_REQUEST, f"body of 1 to {_MAX_BODY} bytes expected")
        try:
            doc = json.loads(self.rfile.read(length))
        except ValueError as exc:
            raise _ApiError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise _ApiError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return doc


def _limit(text: str | None) -> int:
    if text is None:
        return _DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= _MAX_LIMIT:
        raise ConfigError(f"limit must be a whole number from 1 to {_MAX_LIMIT}")
    return int(text)


def _refs(items: Any) -> list[str]:
    """The records named as refs, in the order given, each once."""
    if not isinstance(items, list) or not items:
        raise ConfigError(
            '"records" must be a non-empty list of {"ref"} or {"topic", "partition", "offset"}'
        )
    if len(items) > _MAX_REPLAY:
        raise ConfigError(f"at most {_MAX_REPLAY} records per replay")
    refs: list[str] = []
    for item in items:
        ref = _ref(item)
        if ref not in refs:
            refs.append(ref)
    return refs


def _ref(item: Any) -> str:
    if isinstance(item, dict) and isinstance(item.get("ref"), str):
        deadletters.parse_ref(item["ref"])  # a malformed ref: its own one-line error
        return str(item["ref"])
    p = item.get("partition") if isinstance(item, dict) else None
    o = item.get("offset") if isinstance(item, dict) else None
    topic = item.get("topic") if isinstance(item, dict) else None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (p, o)) or (
        topic is not None and not isinstance(topic, str)
    ):
        raise ConfigError(f"not a record position: {item!r}")
    return f"{topic}:{p}:{o}" if topic else f"{p}:{o}"


def make_server(
    *, settings: Settings, host: str = "127.0.0.1", port: int = 8765
) -> DashboardServer:
    """A bound server, not yet serving (``port=0``: any free port, read ``.url``)."""
    try:
        return DashboardServer(settings=settings, host=host, port=port)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(*, settings: Settings, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the dashboard until Ctrl-C or SIGTERM, then close and return."""
    server = make_server(settings=settings, host=host, port=port)
    topics = f"topics {','.join(settings.topics)}" if settings.topics else f"topic {settings.topic}"
    print(f"kafcel dashboard: {server.url}  ({topics}, Ctrl-C to stop)", flush=True)
    if server.allowed_hosts() is None:
        print(
            f"bound to {host}: replaying dead letters needs the dashboard's token",
            file=sys.stderr,
            flush=True,
        )
    try:
        with _stop_on_sigterm():
            server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print(f"kafcel dashboard stopped at {datetime.now().isoformat(timespec='seconds')}")
