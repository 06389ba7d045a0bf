"""What the operator's endpoints refuse before they spend anything: names that are no DNS labels, clients
over their budget, requests without a token or with too large a body are answered without a TokenReview
and without reading the body.

The endpoints run in aiohttp's test server. Their API client points at an address where nothing listens:
a request that got as far as a TokenReview would fail (503), never give the answer expected here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from finetune_operator.cache import Caches
from finetune_operator.connection import Connection
from finetune_operator.kube import Kube
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.metrics_endpoint import MetricsAccess, build_metrics_app
from finetune_operator.progress.identity import POD_NAME_EXTRA, POD_UID_EXTRA, SERVICE_ACCOUNT_PREFIX
from finetune_operator.progress.ratelimit import RateLimiter
from finetune_operator.progress.server import CLIENT_BURST, MAX_BODY, ProgressService, build_app
from finetune_operator.rest import RestClient
from finetune_operator.settings import Settings

GUARD_SECONDS = 60  # only a hang is caught by it: every answer here comes without waiting for anything


def kube_nowhere() -> Kube:
    return Kube(RestClient(Connection(server="https://127.0.0.1:9")))


def token_reviews(metrics: OperatorMetrics) -> float:
    return sum(s.value for m in metrics.token_reviews.collect() for s in m.samples if s.name.endswith("_total"))


def frozen(limiter: RateLimiter) -> RateLimiter:
    """The same budget, with time standing still: the bucket never refills during the test."""
    return RateLimiter(limiter.rate, limiter.burst, clock=lambda: 0.0)


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), GUARD_SECONDS))


def progress_service(caches_filled: bool = True) -> ProgressService:
    caches = Caches()
    if caches_filled:
        caches.ready.set()
    return ProgressService(kube_nowhere(), caches, Settings(), OperatorMetrics())


async def started(app) -> TestClient:
    test_client = TestClient(TestServer(app))
    await test_client.start_server()
    return test_client


PROGRESS = "/v1/namespaces/{namespace}/finetunejobs/{name}/progress"


def answers(
    service: ProgressService,
    token: str,
    namespace: str = "tenant-a",
    name: str = "job",
    data: bytes = b'{"step": 1}',
    times: int = 1,
) -> list[tuple[int, str | None]]:
    """What the progress endpoint answers ``times`` reports of ``data`` sent with ``token``: (status, error)."""

    async def scenario():
        test_client = await started(build_app(service))
        try:
            found = []
            for _ in range(times):
                response = await test_client.post(
                    PROGRESS.format(namespace=namespace, name=name),
                    data=data,
                    headers={"Authorization": f"Bearer {token}"},
                )
                body = await response.json() if response.content_type == "application/json" else {}
                found.append((response.status, body.get("error")))
            return found
        finally:
            await test_client.close()

    return asyncio.run(asyncio.wait_for(scenario(), GUARD_SECONDS))


@pytest.mark.parametrize(
    "namespace, name",
    [
        ("tenant-a", "x%2F..%2F..%2Fsecrets"),
        ("tenant-a", "..%2Fkube-system"),
        ("tenant-a", "%2E%2E"),
        ("tenant-a", "job%3Fwatch=true"),
        ("tenant-a", "Upper"),
        ("Tenant-A", "job"),
        ("tenant-a", "a" * 64),
        ("tenant-a", "-job"),
        ("tenant-a", "job.x"),
    ],
)
def test_a_name_that_is_not_a_dns_label_is_not_found_before_any_token_review(namespace, name):
    service = progress_service()

    ((status, _),) = answers(service, "some-token", namespace, name)

    assert status == 404
    assert token_reviews(service.metrics) == 0


def test_a_request_without_a_token_is_refused_before_its_body_is_read():
    service = progress_service()
    sent_all = asyncio.Event()

    async def scenario():
        release = asyncio.Event()

        async def endless_body() -> AsyncIterator[bytes]:
            yield b'{"step": 1, '
            await release.wait()  # the rest never comes while the answer is awaited
            sent_all.set()
            yield b"}"

        test_client = await started(build_app(service))
        try:
            response = await test_client.post(PROGRESS.format(namespace="tenant-a", name="job"), data=endless_body())
            assert not sent_all.is_set()
            assert response.status == 401
            assert (await response.json())["error"] == "missing_token"
            release.set()
        finally:
            await test_client.close()

    run(scenario)


def test_a_client_over_its_budget_is_refused_before_its_token_is_looked_at():
    service = progress_service()
    service.clients = frozen(service.clients)

    async def scenario():
        test_client = await started(build_app(service))
        try:
            url = PROGRESS.format(namespace="tenant-a", name="job")
            for _ in range(CLIENT_BURST):
                assert (await test_client.post(url, data=b"{}")).status == 401
            refused = await test_client.post(url, data=b"{}", headers={"Authorization": "Bearer some-token"})
            assert refused.status == 429
            assert (await refused.json())["error"] == "client_rate_limited"
        finally:
            await test_client.close()

    run(scenario)
    assert token_reviews(service.metrics) == 0


def test_a_report_announced_too_large_is_refused_before_any_token_review():
    service = progress_service()

    ((status, _),) = answers(service, "some-token", data=b" " * (MAX_BODY + 1))

    assert status == 413
    assert token_reviews(service.metrics) == 0


# -- /metrics -------------------------------------------------------------------------------------------


def metrics_client(access: MetricsAccess | None, metrics: OperatorMetrics):
    return started(build_metrics_app(metrics, lambda: None, access))


def test_metrics_without_a_token_are_refused_with_a_bearer_challenge():
    metrics = OperatorMetrics()

    async def scenario():
        test_client = await metrics_client(MetricsAccess(kube_nowhere(), metrics), metrics)
        try:
            for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}):
                response = await test_client.get("/metrics", headers=headers)
                assert response.status == 401, headers
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert "finetune_operator" not in await response.text()
        finally:
            await test_client.close()

    run(scenario)
    assert token_reviews(metrics) == 0


def test_a_metrics_client_over_its_budget_is_refused_before_its_token_is_looked_at():
    metrics = OperatorMetrics()
    access = MetricsAccess(kube_nowhere(), metrics)
    access.clients = frozen(access.clients)

    async def scenario():
        test_client = await metrics_client(access, metrics)
        try:
            statuses = [(await test_client.get("/metrics")).status for _ in range(access.clients.burst)]
            assert statuses == [401] * access.clients.burst
            response = await test_client.get("/metrics", headers={"Authorization": "Bearer some-token"})
            assert response.status == 429
        finally:
            await test_client.close()

    run(scenario)
    assert token_reviews(metrics) == 0


def test_the_development_setting_serves_metrics_to_anyone_who_reaches_the_port():
    metrics = OperatorMetrics()

    async def scenario():
        test_client = await metrics_client(None, metrics)
        try:
            response = await test_client.get("/metrics")
            assert response.status == 200
            assert "finetune_operator_jobs" in await response.text()
        finally:
            await test_client.close()

    run(scenario)


def test_an_api_server_out_of_reach_is_a_503_to_retry_not_a_500():
    service = progress_service()

    assert answers(service, "some-token") == [(503, "api_unavailable")]
    assert token_reviews(service.metrics) == 1  # tried, and counted as an error


def reviewed_as_a_pod(service: ProgressService, token: str, namespace: str) -> None:
    """The API server's yes for ``token``, as the service caches it after a TokenReview."""
    user = {
        "username": f"{SERVICE_ACCOUNT_PREFIX}{namespace}:trainer",
        "extra": {POD_NAME_EXTRA: ["job-0"], POD_UID_EXTRA: ["uid-0"]},
    }
    status = {"authenticated": True, "audiences": [service.settings.progress_audience], "user": user}
    service._reviews.put(token, status, 60)


def test_a_report_while_the_caches_fill_is_a_503_to_retry_and_its_retry_costs_no_second_review():
    """A new leader lists everything before its caches are ready: a pod not listed yet is not gone (a 403 would
    make the trainer drop the report). The token is judged first, so the review the retry needs is cached."""
    service = progress_service(caches_filled=False)
    reviewed_as_a_pod(service, "good-token", "tenant-a")

    assert answers(service, "good-token", times=3) == [(503, "starting")] * 3
    assert token_reviews(service.metrics) == 0  # answered from the review cache: the API server is nowhere


def test_a_bad_token_while_the_caches_fill_is_401_not_a_hint_about_the_operator():
    """On a cluster with none of the operator's objects the caches fill without an event that says so: a
    caller with a bad token gets the same 401 as ever, whatever the caches hold."""
    service = progress_service(caches_filled=False)
    service._reviews.put("bad-token", {"authenticated": False}, 60)

    assert answers(service, "bad-token") == [(401, "invalid_token")]
