"""Rank 0's /metrics, scraped and parsed as Prometheus would."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from finetune_core.api import ProgressReport, TrainingReport
from finetune_trainer import metrics_server
from finetune_trainer.metrics_server import METRICS_PORT_ENV, MetricsServer, metrics_hooks
from finetune_trainer.report import StepMetrics
from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


def step(number: int, loss: float) -> StepMetrics:
    return StepMetrics(
        step=number,
        total_steps=40,
        epoch=number / 20,
        loss=loss,
        learning_rate=2e-4,
        grad_norm=None,
        tokens=300,
        step_seconds=0.1,
        tokens_per_second=3000.0,
        eta_seconds=(40 - number) // 10,
    )


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    running = MetricsServer(0, "127.0.0.1")
    yield running
    running.stop()


@pytest.fixture
def from_environment(monkeypatch) -> Iterator[None]:
    """metrics_hooks() keeps one server per process: stop whatever a test left there."""
    yield
    if metrics_server._serving is not None:
        metrics_server._serving.stop()
    monkeypatch.setattr(metrics_server, "_serving", None)


def test_the_training_numbers_are_served_for_prometheus(server):
    server.on_start(ProgressReport(step=0, total_steps=40))
    server.on_step(step(1, loss=2.5))
    server.on_step(step(2, loss=2.25))
    server.on_eval(2, {"eval_loss": 2.4, "eval_tokens": 999.0})

    samples = scrape(server.port)
    assert samples["finetune_trainer_step"] == 2
    assert samples["finetune_trainer_total_steps"] == 40
    assert samples["finetune_trainer_train_loss"] == pytest.approx(2.25)
    assert samples["finetune_trainer_eval_loss"] == pytest.approx(2.4)
    assert samples["finetune_trainer_learning_rate"] == pytest.approx(2e-4)
    assert samples["finetune_trainer_tokens_per_second"] == pytest.approx(3000.0)
    assert samples["finetune_trainer_tokens_total"] == 600
    assert samples["finetune_trainer_eta_seconds"] == 3
    assert samples["finetune_trainer_epoch"] == pytest.approx(0.1)
    assert "finetune_trainer_gpu_memory_bytes" not in samples, "a CPU run has no GPU memory series"
    assert not any(name.startswith(("python_", "process_")) for name in samples), "only the trainer's own registry"


def test_a_diverged_loss_keeps_the_last_finite_value(server):
    server.on_step(step(1, loss=2.5))
    server.on_step(step(2, loss=float("nan")))
    assert scrape(server.port)["finetune_trainer_train_loss"] == pytest.approx(2.5)


def test_the_server_stops_at_the_end_of_the_run(server):
    port = server.port
    server.on_end(TrainingReport(job={"namespace": "team", "name": "job", "uid": "u"}, config_sha256="0" * 64))
    with pytest.raises(urllib.error.URLError):
        scrape(port)


@pytest.mark.parametrize("value", ["0", "not-a-port", "70000"])
def test_port_zero_or_an_invalid_one_serves_nothing(monkeypatch, from_environment, value):
    monkeypatch.setenv(METRICS_PORT_ENV, value)
    assert metrics_hooks() == []


def test_the_port_comes_from_the_environment_and_a_taken_port_costs_only_the_metrics(monkeypatch, from_environment):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        monkeypatch.setenv(METRICS_PORT_ENV, str(taken.getsockname()[1]))
        assert metrics_hooks() == []

    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        free = probe.getsockname()[1]
    monkeypatch.setenv(METRICS_PORT_ENV, str(free))
    (hook,) = metrics_hooks()
    assert hook.port == free
    assert scrape(free)["finetune_trainer_step"] == 0
    (replacement,) = metrics_hooks()  # a second run in the same process takes over the port
    assert replacement is not hook and scrape(free)["finetune_trainer_step"] == 0
