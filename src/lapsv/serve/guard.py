"""The ASGI middleware in front of the service: API key and role, per-key limits, the
body size limit, response headers and metrics. It is plain ASGI (no FastAPI import) and
acts before the application reads a byte of the body, so an unauthenticated or
over-limit client never gets its upload parsed.

Order of the checks on a ``/v1`` request (and ``/metrics``):

1. a key (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``): none or unknown -> 401;
2. its role: ``verify`` may embed, verify, identify, diarize, transcribe and list;
   enrolling and deleting (``POST`` / ``DELETE /v1/speakers/{name}``) need ``admin`` -> 403;
3. the key's concurrency and rate limits -> 429 (with ``Retry-After``);
4. the body: a ``Content-Length`` over the limit -> 413 at once; a body that turns out
   longer while it streams -> 413 as soon as the limit is passed.

``/``, ``/healthz`` and the API docs are public.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from lapsv.serve.keys import ApiKey, KeysError, KeyStore
from lapsv.serve.limits import KeyLimiter, Limits, Refusal
from lapsv.serve.metrics import Metrics

LOG = logging.getLogger("lapsv.serve")
ROUTES = ("/", "/app.js", "/healthz", "/metrics", "/docs", "/openapi.json")
V1_ROUTES = (
    "/v1/embed",
    "/v1/verify",
    "/v1/identify",
    "/v1/diarize",
    "/v1/transcribe",
    "/v1/speakers",
)
MAX_KEY_CHARS = 256
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]

Scope = dict[str, Any]


def required_role(method: str, path: str) -> str | None:
    """The role a request needs (None: public)."""
    if path.startswith("/v1/speakers/") and method in ("POST", "DELETE"):
        return "admin"
    if path == "/v1" or path.startswith("/v1/") or path == "/metrics":
        return "verify"
    return None


def route_label(path: str) -> str:
    """The route template of ``path`` for metrics (a bounded set of labels)."""
    if path in ROUTES or path in V1_ROUTES:
        return path
    return "/v1/speakers/{name}" if path.startswith("/v1/speakers/") else "other"


def method_label(method: str) -> str:
    """The HTTP method for metrics: a standard one, else OTHER (bounded labels)."""
    return method if method in ("GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT") else "OTHER"


def presented_key(scope: Scope) -> str | None:
    """The key of ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (None: none given)."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


def content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def send_json(
    send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()
) -> None:
    """A complete JSON response."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
                *SECURITY_HEADERS,
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class _BodyTooLargeError(Exception):
    """Raised into the application when the body passes the limit while it streams."""


class _Exchange:
    """One request's receive / send: counts body bytes, records the status, adds headers,
    and replaces the application's answer by 413 once the body passed the limit."""

    def __init__(self, receive: Any, send: Any, limit: int | None) -> None:
        self._receive, self._send, self.limit = receive, send, limit
        self.received = 0
        self.too_large = False
        self.status: int | None = None
        self._replaced = False

    async def receive(self) -> dict[str, Any]:
        message = await self._receive()
        if message["type"] == "http.request" and self.limit is not None:
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.too_large = True
                raise _BodyTooLargeError()
        return message

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            if self.too_large:
                self._replaced = True
                await self.refuse(_too_large(self.limit))
                return
            self.status = message["status"]
            message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
        elif self._replaced:
            return
        await self._send(message)

    async def refuse(self, refusal: Refusal, headers: list[tuple[bytes, bytes]] = ()) -> None:
        self.status = refusal.status
        extra = list(headers)
        if refusal.retry_after is not None:
            extra.append((b"retry-after", str(refusal.retry_after).encode()))
        await send_json(self._send, refusal.status, {"error": refusal.message}, extra)


def _too_large(limit: int | None) -> Refusal:
    return Refusal(
        413, f"request body too large: the limit is {(limit or 0) / 1e6:g} MB (max_body_mb)"
    )


class Guard:
    """ASGI middleware: keys, roles, limits and metrics around ``app`` (see the module doc).

    Args:
        app: the ASGI application behind it.
        keys: the keys file of the server.
        limits: body size, per-key concurrency and rate.
        metrics: where requests are counted.
    """

    def __init__(self, app: Any, *, keys: KeyStore, limits: Limits, metrics: Metrics) -> None:
        self.app = app
        self.keys = keys
        self.limits = limits
        self.metrics = metrics
        self.limiter = KeyLimiter(limits)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        exchange = _Exchange(receive, send, None)
        self.metrics.started()
        try:
            await self._serve(scope, exchange)
        finally:
            self.metrics.finished()
            self.metrics.observe_request(
                route_label(scope["path"]),
                method_label(scope["method"]),
                exchange.status or 500,
                time.perf_counter() - started,
            )

    async def _serve(self, scope: Scope, exchange: _Exchange) -> None:
        role = required_role(scope["method"], scope["path"])
        if role is None or scope["method"] == "OPTIONS":  # CORS preflights carry no key
            await self.app(scope, exchange.receive, exchange.send)
            return
        key = await self._authenticate(scope, role)
        if isinstance(key, Refusal):
            challenge = [(b"www-authenticate", b'Bearer realm="lapsv"')]
            await exchange.refuse(key, challenge if key.status == 401 else [])
            return
        refusal = self.limiter.admit(key.id)
        if refusal is not None:
            await exchange.refuse(refusal)
            return
        try:
            limit = self.limits.max_body_bytes
            length = content_length(scope)
            if length is not None and length > limit:
                await exchange.refuse(_too_large(limit))
                return
            exchange.limit = limit
            try:
                await self.app(scope, exchange.receive, exchange.send)
            except _BodyTooLargeError:
                if exchange.status is None:
                    await exchange.refuse(_too_large(limit))
        finally:
            self.limiter.release(key.id)

    async def _authenticate(self, scope: Scope, role: str) -> ApiKey | Refusal:
        """The request's key if it is valid and has ``role``; else why not (401 / 403)."""
        token = presented_key(scope)
        if token is None:
            return Refusal(
                401, "no API key: send `Authorization: Bearer KEY` (or `X-API-Key: KEY`)"
            )
        try:
            key = (
                None
                if len(token) > MAX_KEY_CHARS
                else await asyncio.to_thread(self.keys.authenticate, token)
            )
        except KeysError as error:
            LOG.error("%s", error)
            return Refusal(503, "the server's keys file cannot be read; see the server log")
        if key is None:
            return Refusal(401, "unknown API key")
        if not key.allows(role):
            return Refusal(
                403, f"this key has the {key.role} role; this request needs the {role} role"
            )
        return key
