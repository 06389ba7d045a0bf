"""The trainer benchmark's smoke runs: both modes, tiny shapes, a few steps, on the CPU.

They check that the benchmark works end to end and what it records, never how fast anything was:
timings on shared test machines mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

REPO = Path(__file__).resolve().parents[2]


def smoke(tmp_path: Path, *mode: str) -> dict:
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.trainer", "--smoke", *mode, "--out", str(out), "--threads", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = out.glob("trainer-*-smoke-*.json")
    return {"stdout": result.stdout, **json.loads(path.read_text())}


def assert_ran(run: dict, trainer: str) -> None:
    assert "error" not in run, run.get("log_tail")
    assert run["trainer"] == trainer
    assert run["steps"] >= 2 and run["tokens"] > 0
    assert run["tokens_per_second"] > 0 and run["throughput"]["windows"]
    assert run["peak_rss_mib"] > 0
    assert run["heldout_loss"] > 0 and run["train_loss_last_quarter"] > 0
    assert len(run["step_log"]) == run["steps"]


def test_cpu_smoke_runs_ours_and_every_trl_variant_and_compares_them(tmp_path):
    results = smoke(tmp_path)

    (suite,) = results["suites"]
    assert suite["mode"] == "cpu"
    assert suite["model"]["parameters"] > 0 and suite["model"]["vocab_size"] > 0
    runs = suite["runs"]
    assert_ran(runs["ours"], "ours")
    for name in ("trl-padded", "trl-grouped", "trl-packed"):
        assert_ran(runs[name], "trl")
    assert suite["baseline"] in {"trl-padded", "trl-grouped", "trl-packed"}
    comparison = suite["comparison"]
    assert comparison["ratio"] > 0
    assert set(comparison) >= {"heldout_loss_gap", "train_loss_gap", "counts", "quality"}
    # The TRL runs stop at ours' token count (within one step), so losses compare at equal tokens.
    assert runs[suite["baseline"]]["tokens"] >= runs["ours"]["tokens"]
    assert "ours / TRL-best" in results["stdout"] and "tokens/s" in results["stdout"]


def test_gpu_mode_smoke_runs_on_the_cpu_and_reports_mfu(tmp_path):
    results = smoke(tmp_path, "--gpu")

    (suite,) = results["suites"]
    assert suite["mode"] == "gpu"
    runs = suite["runs"]
    assert_ran(runs["ours"], "ours")
    assert_ran(runs["trl-packed"], "trl")
    for run in (runs["ours"], runs["trl-packed"]):
        assert run["mfu"]["flops_per_token"] > 0 and run["mfu"]["peak_tflops"] > 0
    assert "MFU" in results["stdout"]
