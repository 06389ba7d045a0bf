"""The agent's door to the API server: the operator's own REST client (finetune_operator.rest), so both
send requests the same way: plain dicts, every path checked in one place, a deadline per request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune_operator.connection import from_kubeconfig
from finetune_operator.rest import KubeError, RestClient

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"

ApiError = KubeError  # status 0: no answer from the API server


class Client:
    """Thread-safe: the pod workers, the heartbeat and the watch share one connection pool."""

    def __init__(self, kubeconfig: str | Path):
        connection = from_kubeconfig([Path(kubeconfig)], explicit=True)
        self.server = connection.server
        self._rest = RestClient(connection, timeout=30, pool_size=64, user_agent="finetune-nodeagent")

    def close(self) -> None:
        self._rest.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> dict[str, Any]:
        return self._rest.request(method, path, body, query or (), content_type, timeout=timeout)

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def watch(self, path: str, query: list[tuple[str, str]], timeout_seconds: int) -> Iterator[dict[str, Any]]:
        """The events of one watch request, until the server ends it (after ``timeout_seconds``)."""
        return self._rest.watch(path, query, timeout_seconds)
