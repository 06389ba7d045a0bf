"""HTTP to the API server over urllib3: JSON in and out, a deadline per request, every path checked here.

The operator and the local node agent share it. Paths are built from checked, escaped segments
(``kube.Kind.path``); this is the last lock: whatever path reaches a request is refused unless it is
segments of letters, digits, '-' and '.', so no query, percent escape or dot segment is ever sent.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlencode

import urllib3

from .connection import Connection

JSON = "application/json"
USER_AGENT = "finetune-operator"
CONNECT_SECONDS = 10.0
_API_PATH = re.compile(r"(/[a-z0-9A-Z][-a-zA-Z0-9.]*)+")
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}

# verb (get, list, watch, create, update, patch, delete), resource ("pods", "finetunejobs/status"), code
# ("200", "404"; "error" when no answer came).
Observer = Callable[[str, str, str], None]


class InvalidApiPath(ValueError):
    """A namespace, name or subresource that cannot be one segment of an API path: refused before any request.

    The value is not repeated in the message: it may come from a tenant, and messages reach logs.
    """


class KubeError(RuntimeError):
    """The API server refused (``status`` is its HTTP status) or could not be reached (status 0)."""

    def __init__(self, status: int, reason: str, body: str):
        super().__init__(f"{status} {reason}: {body[:500]}")
        self.status = status
        self.reason = reason
        self.body = body


def checked_path(path: str) -> str:
    if _API_PATH.fullmatch(path) is None:
        # Paths come from Kind.path; anything else (a query, "..", a percent escape) is a bug, refused here.
        raise InvalidApiPath("an API path must be segments of letters, digits, '-' and '.' only")
    return path


def request_labels(method: str, path: str, watch: bool = False) -> tuple[str, str]:
    """The Kubernetes verb and resource of a request, as the API server's own metrics name them."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) >= 2:
        rest = parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        rest = parts[3:]
    else:  # /version, /healthz: not a resource
        return method.lower(), ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    resource = "/".join(rest[:1] + rest[2:3])
    if method == "GET":
        verb = "watch" if watch else "get" if len(rest) >= 2 else "list"
    else:
        verb = _VERBS.get(method, method.lower())
    return verb, resource


class RestClient:
    """Thread-safe: one pool of connections for every thread of the process."""

    def __init__(
        self,
        connection: Connection,
        timeout: float = 60.0,
        pool_size: int = 16,
        observe: Observer | None = None,
        user_agent: str = USER_AGENT,
    ):
        self.connection = connection
        self.timeout = timeout
        self.observe = observe
        self._headers = {"User-Agent": user_agent}
        self._pool = urllib3.PoolManager(
            num_pools=2, maxsize=pool_size, ssl_context=connection.ssl_context(), retries=False
        )
        self._streams: set[urllib3.BaseHTTPResponse] = set()
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for response in list(self._streams):
                # A watch blocked in a read ends now. One the server ended while its reader was elsewhere has
                # its socket closed or back in the pool already: ended, which is all close() is for.
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    response.shutdown()
        self._pool.clear()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Iterable[tuple[str, str]] = (),
        content_type: str = JSON,
        accept: str = JSON,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send one request; its answer as a dict ({} when empty), or KubeError for an error status, for no
        answer, or for an answer not complete within ``timeout`` seconds (checked between reads)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        response = self._send(
            method, path, body, query, content_type, accept, urllib3.Timeout(connect=CONNECT_SECONDS, read=timeout)
        )
        try:
            chunks = []
            while chunk := response.read1(1 << 16):
                if time.monotonic() > deadline:
                    raise KubeError(0, "Timeout", f"no complete answer within {timeout:g} seconds")
                chunks.append(chunk)
            data = b"".join(chunks)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise KubeError(0, "Unreachable", str(error)) from None
        finally:
            response.release_conn()
        if response.status >= 400:
            raise KubeError(response.status, response.reason or "", data.decode(errors="replace"))
        return json.loads(data) if data else {}

    def watch(self, path: str, query: Iterable[tuple[str, str]], timeout_seconds: int) -> Iterator[dict[str, Any]]:
        """The events of one watch request, until the server ends it after ``timeout_seconds``; ``close()``
        ends it sooner."""
        query = [*query, ("watch", "true"), ("timeoutSeconds", str(timeout_seconds)), ("allowWatchBookmarks", "true")]
        response = self._send(
            "GET",
            path,
            None,
            query,
            JSON,
            JSON,
            urllib3.Timeout(connect=CONNECT_SECONDS, read=timeout_seconds + 30),
            watch=True,
        )
        if response.status >= 400:
            body = response.read().decode(errors="replace")
            response.release_conn()
            raise KubeError(response.status, response.reason or "", body)
        with self._lock:
            self._streams.add(response)
        try:
            pending = b""
            for chunk in response.stream(amt=None, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise KubeError(0, "Unreachable", str(error)) from None
        finally:
            with self._lock:
                self._streams.discard(response)
            response.close()

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        query: Iterable[tuple[str, str]],
        content_type: str,
        accept: str,
        timeout: urllib3.Timeout,
        watch: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        url = self.connection.server + checked_path(path)
        if query := list(query):
            url += "?" + urlencode(query)
        headers = {**self._headers, "Accept": accept}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        verb, resource = request_labels(method, path, watch)
        token = self.connection.token
        response = self._attempt(method, url, payload, headers, timeout, verb, resource)
        # A projected token is rotated by the kubelet: a 401 may only mean the file holds a newer one.
        if response.status == 401 and token is not None and token.reload():
            response.drain_conn()
            response.release_conn()
            response = self._attempt(method, url, payload, headers, timeout, verb, resource)
        return response

    def _attempt(
        self,
        method: str,
        url: str,
        payload: bytes | None,
        headers: dict[str, str],
        timeout: urllib3.Timeout,
        verb: str,
        resource: str,
    ) -> urllib3.BaseHTTPResponse:
        if self.connection.token is not None:
            headers = {**headers, "Authorization": f"Bearer {self.connection.token.value()}"}
        try:
            response = self._pool.request(
                method,
                url,
                body=payload,
                headers=headers,
                timeout=timeout,
                retries=False,
                redirect=False,
                preload_content=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as error:
            self._observed(verb, resource, "error")
            raise KubeError(0, "Unreachable", str(error)) from None
        self._observed(verb, resource, str(response.status))
        return response

    def _observed(self, verb: str, resource: str, code: str) -> None:
        if self.observe is not None:
            self.observe(verb, resource, code)
