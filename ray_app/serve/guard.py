"""Serve's guard: API keys, the request-size limits and the admission bound, in front of the routes.

`RequestGuard` is an ASGI middleware around the FastAPI app of each replica. Before any route runs
it checks the key (every path but `/health`: `Authorization: Bearer <key>`, compared in constant
time), then reads the body from the ASGI stream chunk by chunk and refuses it (413) as soon as it
passes `max_body_bytes` (at once when Content-Length says so, before a byte is read); the route
gets the body already read. Anything a route raises becomes an OpenAI-style 500, never plain text.

The JSON body is parsed by pydantic-core's Rust parser (jiter): its nesting is bounded by a fixed
recursion limit (a 10,000-deep array is a 400, not a RecursionError), it refuses invalid UTF-8,
lone surrogates, NaN and numbers too long to convert, and it is ~5× faster than `json`. It ships
with FastAPI (pydantic), so it adds no dependency.

`AdmissionBound` counts the chat requests a replica has taken (decoding or waiting for a row) until
each one's task ends, streamed answers included; over the bound a request gets 429 + Retry-After,
which the OpenAI SDKs honour when they retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pydantic_core
from starlette.requests import ClientDisconnect

from ray_app.serve.openai_protocol import OpenAiError

API_KEY_ENV = "SLM_SWAP_API_KEY"  # one key, or several separated by commas
API_KEY_FILE_ENV = "SLM_SWAP_API_KEY_FILE"  # one key a line; re-read when it changes (rotation)
OPEN_PATHS = frozenset({"/health"})  # answered without a key: load balancers and probes hold none
MAX_JSON_DEPTH = 200  # jiter's fixed recursion limit: deeper bodies are refused while parsing

logger = logging.getLogger("ray.serve")  # a replica's log (and the dashboard's)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# --- API keys -------------------------------------------------------------------------------------


def checked_key(key: str, source: str) -> str:
    """A key as it must travel in an HTTP header: printable ASCII, no spaces or commas."""
    if not key or not all("!" <= character <= "~" for character in key) or "," in key:
        raise ValueError(f"{source}: an API key must be printable ASCII without spaces or commas")
    return key


def keys_from_text(text: str, source: str) -> tuple[str, ...]:
    """Keys separated by commas or whitespace (SLM_SWAP_API_KEY, --api-key)."""
    return tuple(checked_key(key, source) for key in text.replace(",", " ").split())


def keys_from_env(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    return keys_from_text(environ.get(API_KEY_ENV, ""), API_KEY_ENV)


def read_key_file(path: Path) -> tuple[str, ...]:
    """One key a line; blank lines and `#` comments are skipped. Raises ValueError naming file:line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the API key file ({error.__class__.__name__})") from None
    keys = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            keys.append(checked_key(text, f"{path}:{number}"))
    if not keys:
        raise ValueError(f"{path}: the API key file holds no key (one key a line, # for comments)")
    return tuple(keys)


def key_digest(key: bytes) -> bytes:
    # Comparing digests keeps every comparison the same length, so timing tells nothing about length.
    return hashlib.sha256(key).digest()


class ApiKeys:
    """The keys a replica accepts: fixed keys plus a key file, re-read whenever it changes on disk.

    Rotation needs no restart: add the new key to the file, move clients over, delete the old line.
    A file that turns unreadable or empty keeps the last keys read (and says so in the log).
    The keys never appear in a repr, a log line or an error body.
    """

    def __init__(self, keys: Iterable[str] = (), key_file: str | Path | None = None):
        self.fixed = tuple(key_digest(checked_key(key, "api key").encode()) for key in keys)
        self.key_file = Path(key_file) if key_file else None
        self.file_digests: tuple[bytes, ...] = ()
        self.file_version: tuple[int, int, int] | None = None
        if self.key_file is not None:
            self.refresh(strict=True)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self.fixed)} fixed keys, key_file={str(self.key_file) if self.key_file else None})"

    @property
    def required(self) -> bool:
        return bool(self.fixed) or self.key_file is not None

    @property
    def count(self) -> int:
        return len(self.fixed) + len(self.file_digests)

    def refresh(self, strict: bool = False) -> None:
        """Re-read the key file when its size, mtime or inode changed."""
        assert self.key_file is not None
        try:
            status = self.key_file.stat()
            version = (status.st_mtime_ns, status.st_size, status.st_ino)
            if version == self.file_version:
                return
            self.file_digests = tuple(key_digest(key.encode()) for key in read_key_file(self.key_file))
            self.file_version = version
        except (OSError, ValueError) as error:
            if strict:
                if isinstance(error, OSError):
                    raise ValueError(f"{self.key_file}: cannot read the API key file ({error.strerror})") from None
                raise
            if self.file_version is not None:  # warn once per change, not per request
                logger.warning("API key file %s: %s; keeping the %d keys read before", self.key_file,
                               error.__class__.__name__, len(self.file_digests))  # fmt: skip
                self.file_version = None

    def accepts(self, authorization: bytes | None) -> bool:
        token = bearer_token(authorization)
        if token is None:
            return False
        if self.key_file is not None:
            self.refresh()
        offered = key_digest(token)
        matched = False
        for digest in self.fixed + self.file_digests:  # no early exit: every key costs the same
            matched |= hmac.compare_digest(offered, digest)
        return matched


def bearer_token(authorization: bytes | None) -> bytes | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    token = token.strip()
    return token if scheme.lower() == b"bearer" and token else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def check_exposure(host: str, keys_required: bool, allow_unauthenticated: bool) -> None:
    """Refuse to bind beyond loopback without a key, unless told so."""
    if is_loopback(host) or keys_required or allow_unauthenticated:
        return
    raise ValueError(
        f"--host {host} exposes the endpoint beyond this machine and no API key is set: anyone who reaches "
        f"the port could use the model. Set {API_KEY_ENV} (or --api-key / --api-key-file), "
        "or pass --allow-unauthenticated if a gateway in front already authenticates"
    )


def access_notes(host: str, port: int, api_keys: ApiKeys) -> list[str]:
    """What the start banner says about who can reach the endpoint (never the keys themselves)."""
    notes = []
    if host in ("0.0.0.0", "::"):
        notes.append(f"bound to {host}:{port}: every interface of this machine")
    elif not is_loopback(host):
        notes.append(f"bound to {host}:{port}: reachable beyond this machine")
    if api_keys.required:
        source = f", key file {api_keys.key_file}" if api_keys.key_file else ""
        count = f"{api_keys.count} key{'s' if api_keys.count != 1 else ''}"
        notes.append(f"API key required on every route but /health ({count}{source})")
    elif is_loopback(host):
        notes.append("no API key: only this machine can reach it")
    else:
        notes.append("warning: no API key (--allow-unauthenticated): anyone who reaches the port can use the model")
    return notes


def unauthorized(authorization: bytes | None) -> OpenAiError:
    if bearer_token(authorization) is None:
        message = (
            "no API key: send it as `Authorization: Bearer <key>` (OpenAI SDKs: api_key=...; "
            f"slm-swap's clients read {API_KEY_ENV})"
        )
    else:
        message = "the API key is not valid for this server"
    return OpenAiError(401, message, None, "invalid_api_key", {"www-authenticate": "Bearer"})


# --- body and JSON --------------------------------------------------------------------------------


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 naming what is wrong and where."""
    try:
        body = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as error:
        reason = str(error)
        if reason.startswith("recursion limit exceeded"):
            reason = f"it nests deeper than {MAX_JSON_DEPTH} levels ({reason})"
        elif "surrogate" in reason or "hex escape" in reason:
            reason = f"a \\u escape is malformed or a lone UTF-16 surrogate ({reason})"
        raise OpenAiError(400, f"request body is not valid JSON: {reason}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise OpenAiError(400, "request body must be a JSON object", code="invalid_json")
    return body


def body_too_large(limit: int) -> OpenAiError:
    return OpenAiError(413, f"request body is over this server's limit of {limit:,} bytes (max_body_bytes)",
                       None, "request_too_large")  # fmt: skip


class ClientLeft(Exception):
    """The client disconnected before its body was read whole."""


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, read chunk by chunk; OpenAiError 413 as soon as it passes `limit` bytes."""
    length = dict(scope["headers"]).get(b"content-length")
    if length is not None:
        if not length.isdigit():
            raise OpenAiError(400, "Content-Length must be a number of bytes", code="invalid_request")
        if int(length) > limit:
            raise body_too_large(limit)  # refused before a byte of it is read
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientLeft
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replayed(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the client's own messages (disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def send_error(send: Send, error: OpenAiError) -> None:
    content = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": content, "more_body": False})


def server_error(error: BaseException) -> OpenAiError:
    return OpenAiError(500, f"the server failed on this request ({error.__class__.__name__}); the replica's "
                            "Serve log has the traceback", None, "internal_error")  # fmt: skip


class RequestGuard:
    """ASGI middleware: key check, body limit, and an OpenAI-style 500 for anything a route raises."""

    def __init__(self, app, api_keys: ApiKeys, max_body_bytes: int, open_paths: frozenset[str] = OPEN_PATHS):
        self.app, self.api_keys, self.max_body_bytes, self.open_paths = app, api_keys, max_body_bytes, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (and websockets, which no route accepts)
            await self.app(scope, receive, send)
            return
        try:
            if self.api_keys.required and scope["path"] not in self.open_paths:
                authorization = dict(scope["headers"]).get(b"authorization")
                if not self.api_keys.accepts(authorization):
                    raise unauthorized(authorization)  # before a byte of the body is read
            body = await read_body(scope, receive, self.max_body_bytes)
        except OpenAiError as error:
            await send_error(send, error)
            return
        except ClientLeft:
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, replayed(body, receive), watched_send)
        except ClientDisconnect:
            return
        except Exception as error:  # FastAPI's handler already answered in the OpenAI shape, if it could
            logger.exception("request %s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                await send_error(send, server_error(error))


# --- admission ------------------------------------------------------------------------------------


class AdmissionBound:
    """How many chat requests a replica holds at once (decoding or waiting for a row)."""

    def __init__(self, limit: int, retry_after_s: int):
        self.limit, self.retry_after_s = limit, retry_after_s
        self.ongoing = 0
        self.refused = 0

    def admit(self) -> None:
        """Count the calling request until its task ends (a streamed answer included); 429 when full."""
        if self.ongoing >= self.limit:
            self.refused += 1
            raise OpenAiError(
                429,
                f"this replica already holds its {self.limit} requests (max_ongoing_requests); "
                f"retry in {self.retry_after_s} s",
                None,
                "server_busy",
                {"retry-after": str(self.retry_after_s)},
            )
        self.ongoing += 1
        task = asyncio.current_task()
        assert task is not None, "admit() runs inside the request's task"
        task.add_done_callback(self.release)

    def release(self, _task: asyncio.Task | None = None) -> None:
        self.ongoing -= 1

    def stats(self) -> dict[str, int]:
        return {"ongoing": self.ongoing, "limit": self.limit, "refused": self.refused}
