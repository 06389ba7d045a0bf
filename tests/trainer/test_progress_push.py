"""The progress pusher against a local HTTPS server that answers as the operator's endpoint does.

No timing assertions: "never blocks" is shown by hook calls that complete while the server holds
every request, and waits are generous joins and arrivals.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from finetune_core.api import (
    ArtifactReport,
    CheckpointReport,
    EvaluationSummary,
    ProgressEndpoint,
    TrainingReport,
)
from finetune_operator.certificates import make_ca, make_serving_certificate
from finetune_trainer.progress_push import ProgressPusher, progress_hooks
from finetune_trainer.report import StepMetrics

PATH = "/v1/namespaces/team/finetunejobs/job/progress"
WAIT = 30.0  # generous: the machine is shared; nothing here measures speed


@dataclass
class Received:
    path: str
    authorization: str
    report: dict


class FakeOperator:
    """HTTPS, a certificate from a CA of its own; answers 204 unless told otherwise, and can hold requests."""

    def __init__(self, directory: Path):
        ca = make_ca("progress-test-ca")
        serving = make_serving_certificate(ca, "progress", ["127.0.0.1", "localhost"])
        self.ca_file = directory / "ca.crt"
        self.ca_file.write_bytes(ca.certificate_pem)
        (directory / "tls.crt").write_bytes(serving.certificate_pem)
        (directory / "tls.key").write_bytes(serving.key_pem)
        self.answers: list[int] = []  # statuses for the next requests, in order; 204 once used up
        self.received: list[Received] = []
        self.release = threading.Event()  # cleared: every request waits (after it is recorded) until set
        self.release.set()
        self._arrived = threading.Condition()
        operator = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with operator._arrived:
                    operator.received.append(
                        Received(self.path, self.headers.get("Authorization", ""), json.loads(body))
                    )
                    status = operator.answers.pop(0) if operator.answers else 204
                    operator._arrived.notify_all()
                operator.release.wait(WAIT)
                if status == 204:
                    self.send_response(204)
                    self.end_headers()
                    return
                answer = json.dumps({"error": f"error-{status}", "message": f"refused with {status}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_port}{PATH}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def wait_for(self, count: int) -> list[dict]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.received) >= count, WAIT), (
                f"expected {count} reports, got {[r.report for r in self.received]}"
            )
            return [r.report for r in self.received]

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def operator(tmp_path: Path) -> Iterator[FakeOperator]:
    server = FakeOperator(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("token-a\n")
    return path


@pytest.fixture
def make_pusher(operator: FakeOperator, token_file: Path) -> Iterator[Callable[..., ProgressPusher]]:
    made: list[ProgressPusher] = []

    def make(min_interval: float = 0.05, url: str | None = None, **options) -> ProgressPusher:
        endpoint = ProgressEndpoint(
            url=url or operator.url,
            ca_file=str(operator.ca_file),
            token_file=str(token_file),
            min_interval_seconds=min_interval,
        )
        pusher = ProgressPusher(endpoint, **{"backoff_base": 0.01, "backoff_cap": 0.05, **options})
        made.append(pusher)
        return pusher

    yield make
    for pusher in made:
        pusher.close(timeout=1)


def step(number: int, total: int = 100) -> StepMetrics:
    return StepMetrics(
        step=number,
        total_steps=total,
        epoch=number / total,
        loss=2.0 - number / 100,
        learning_rate=1e-4,
        grad_norm=0.5,
        tokens=256,
        step_seconds=0.1,
        tokens_per_second=2560.0,
        eta_seconds=total - number,
    )


def checkpoint(number: int) -> CheckpointReport:
    return CheckpointReport(step=number, uri=f"file:///out/checkpoints/step-{number}")


def test_reports_carry_the_bearer_token_read_from_the_file_at_each_send(operator, make_pusher, token_file):
    pusher = make_pusher()
    pusher.on_checkpoint(checkpoint(10))
    operator.wait_for(1)
    token_file.write_text("token-b\n")  # the kubelet rotated it
    pusher.on_checkpoint(checkpoint(20))
    operator.wait_for(2)
    assert [r.authorization for r in operator.received] == ["Bearer token-a", "Bearer token-b"]
    assert [r.path for r in operator.received] == [PATH, PATH]
    assert operator.received[0].report["checkpoint"] == {"step": 10, "uri": "file:///out/checkpoints/step-10"}


def test_routine_reports_are_coalesced_and_the_newest_wins(operator, make_pusher):
    pusher = make_pusher(min_interval=0.2)
    operator.release.clear()
    pusher.on_step(step(1))
    operator.wait_for(1)  # the sender is now waiting for the server's answer
    for number in range(2, 21):
        pusher.on_step(step(number))
    operator.release.set()
    reports = operator.wait_for(2)
    pusher.close(timeout=WAIT)
    assert [r.report["step"] for r in operator.received] == [1, 20]
    assert reports[1]["trainLoss"] == pytest.approx(1.8) and reports[1]["totalSteps"] == 100
    assert pusher.counters.superseded == 18 and pusher.counters.dropped == 0


def test_a_checkpoint_report_goes_out_at_once_with_the_latest_numbers(operator, make_pusher):
    pusher = make_pusher(min_interval=3600)
    pusher.on_step(step(1))
    operator.wait_for(1)
    pusher.on_step(step(2))  # a routine report: waits for its turn, an hour away
    pusher.on_checkpoint(checkpoint(2))
    reports = operator.wait_for(2)
    pusher.close(timeout=WAIT)
    assert len(operator.received) == 2, "the routine report of step 2 is superseded by the checkpoint's"
    assert reports[1]["checkpoint"]["step"] == 2
    assert reports[1]["step"] == 2 and reports[1]["trainLoss"] == pytest.approx(1.98)
    assert reports[1]["learningRate"] == pytest.approx(1e-4) and reports[1]["etaSeconds"] == 98


def test_hook_calls_return_while_the_operator_hangs_and_a_full_queue_drops_routine_reports(operator, make_pusher):
    pusher = make_pusher(max_queue=5, request_timeout=WAIT * 2)
    operator.release.clear()
    pusher.on_step(step(1))
    operator.wait_for(1)  # from here on the sender is stuck in a request the server does not answer

    def training():
        for number in range(2, 17):
            pusher.on_step(step(number))
            if number == 4:
                pusher.on_checkpoint(checkpoint(4))

    caller = threading.Thread(target=training)
    caller.start()
    caller.join(WAIT)
    assert not caller.is_alive(), "a hook call waited for the operator"
    assert pusher.counters.dropped == 11  # 16 reports queued behind the hung one, room for 5
    assert len(operator.received) == 1

    operator.release.set()
    reports = operator.wait_for(3)
    assert [r["step"] for r in reports] == [1, 4, 16]
    assert reports[1]["checkpoint"]["step"] == 4, "the checkpoint report was not the one dropped"


@pytest.mark.parametrize("status", [503, 500, 429])
def test_a_server_error_or_rate_limit_is_retried_until_delivered(operator, make_pusher, status):
    operator.answers = [status, status]
    pusher = make_pusher()
    pusher.on_checkpoint(checkpoint(5))
    reports = operator.wait_for(3)
    pusher.close(timeout=WAIT)
    assert reports[0] == reports[1] == reports[2]
    assert (pusher.counters.sent, pusher.counters.retries, pusher.counters.failed) == (1, 2, 0)


def test_a_refused_report_is_logged_once_with_the_servers_message_and_not_retried(operator, make_pusher, trainer_log):
    operator.answers = [400, 400]
    pusher = make_pusher()
    pusher.on_checkpoint(checkpoint(3))
    pusher.on_checkpoint(checkpoint(4))
    pusher.on_checkpoint(checkpoint(5))
    operator.wait_for(3)
    pusher.close(timeout=WAIT)
    assert [r.report["step"] for r in operator.received] == [3, 4, 5]
    assert (pusher.counters.sent, pusher.counters.failed, pusher.counters.retries) == (1, 2, 0)
    refusals = [r for r in trainer_log.records if r.getMessage() == "progress_report_refused"]
    assert [r.levelname for r in refusals] == ["WARNING", "DEBUG"], "the same refusal is logged once"
    assert refusals[0].fields["message"] == "refused with 400" and refusals[0].fields["status"] == 400
    assert not any("token-a" in repr(vars(record)) for record in trainer_log.records), "the token reached the log"


def test_the_final_report_is_delivered_before_on_end_returns(operator, make_pusher):
    pusher = make_pusher(min_interval=3600)
    for number in range(1, 6):
        pusher.on_step(step(number, total=5))
    evaluation = EvaluationSummary(gate="Passed", message="task loss 1.2 -> 0.8")
    artifact = ArtifactReport(uri="file:///out/artifacts/job/v1", digest="sha256:" + "a" * 64, size_bytes=1234)
    pusher.on_end(
        TrainingReport(
            job={"namespace": "team", "name": "job", "uid": "u"},
            config_sha256="0" * 64,
            steps=5,
            final_train_loss=1.95,
            evaluation=evaluation,
            artifact=artifact,
        )
    )
    final = operator.received[-1].report  # no waiting: on_end returned only once it was delivered
    assert final["stage"] == "done" and final["step"] == 5 and final["totalSteps"] == 5
    assert final["artifact"] == {
        "uri": "file:///out/artifacts/job/v1",
        "digest": "sha256:" + "a" * 64,
        "sizeBytes": 1234,
    }
    assert final["evaluation"]["gate"] == "Passed"
    assert final["trainLoss"] == pytest.approx(1.95) and final["etaSeconds"] == 0
    assert pusher.counters.sent == len(operator.received)


def test_the_final_flush_gives_up_when_the_operator_is_away(make_pusher):
    with socket.socket() as placeholder:  # a port nobody listens on once it is closed
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    pusher = make_pusher(url=f"https://127.0.0.1:{port}{PATH}")
    pusher.on_step(step(1))
    pusher.on_checkpoint(checkpoint(1))
    closing = threading.Thread(target=pusher.close, kwargs={"timeout": 0.5})
    closing.start()
    closing.join(WAIT)
    assert not closing.is_alive(), "the flush did not give up"
    counters = pusher.counters
    assert counters.sent == 0 and counters.retries >= 1
    assert counters.failed + counters.dropped + counters.superseded == 2


def test_an_endpoint_that_is_not_https_gets_no_pusher(token_file):
    endpoint = ProgressEndpoint(url=f"http://127.0.0.1:1{PATH}", token_file=str(token_file))
    assert progress_hooks(endpoint) == []
    assert progress_hooks(None) == []
