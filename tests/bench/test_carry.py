"""What make gpu-check carries to a lent GPU machine, and how the machine installs it: no network needed.

The choices are pure functions over what a venv and PyPI would say (given here as data); the
installer runs the real pip, offline, on wheels the tests write.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from benchmarks.carry import (
    LAZY_IMPORTS,
    MIB,
    TRAINER_IMPORTS,
    CarryError,
    Installed,
    Wheel,
    plan_carry,
    resolve,
    slim_bitsandbytes,
    wheel_python,
)
from benchmarks.carry_install import install, problems

REPO = Path(__file__).resolve().parents[2]


def venv(**packages: tuple[str, list[str]] | tuple[str, list[str], int]) -> callable:
    """A lookup over made-up installed distributions: name=(version, requires[, installed bytes])."""

    def lookup(name: str) -> Installed:
        version, requires, *size = packages[name.replace("-", "_")]
        return Installed(name, version, tuple(requires), size[0] if size else 1000)

    return lookup


def roles(needs) -> dict[str, tuple[str, str]]:
    return {need.name: (need.feature, need.role) for need in needs}


# ---------------------------------------------------------------------------------------------
# resolve


def test_a_package_the_image_lacks_is_carried_and_its_requirements_followed():
    lookup = venv(
        pydantic=("2.14", ["pydantic-core==2.50", "typing-extensions>=4.16"]),
        pydantic_core=("2.50", []),
        typing_extensions=("4.16", []),
    )
    needs = resolve({"trainer": ["pydantic"]}, {"pydantic": ">=2.9,<3"}, {"typing-extensions": "4.17"}, lookup)
    assert roles(needs) == {
        "pydantic": ("trainer", "carried"),
        "pydantic-core": ("trainer", "carried"),
        "typing-extensions": ("trainer", "checked"),  # the image's 4.17 will do
    }
    assert {need.name: need.requirement for need in needs}["pydantic"] == "<3,>=2.9"


def test_an_image_version_outside_the_project_requirement_is_carried():
    lookup = venv(transformers=("5.24.0", []))
    needs = resolve({"trainer": ["transformers"]}, {"transformers": ">=5.24,<6"}, {"transformers": "5.17.0"}, lookup)
    assert roles(needs) == {"transformers": ("trainer", "carried")}


def test_an_image_package_of_unknown_version_is_a_fallback_when_small_and_checked_when_large():
    lookup = venv(
        trl=("1.16", ["peft", "pyarrow>=21"]),
        peft=("0.21", [], 3 * MIB),
        pyarrow=("26.0", [], 150 * MIB),
    )
    needs = resolve({"trl-baseline": ["trl"]}, {}, {"peft": None, "pyarrow": None}, lookup)
    assert roles(needs) == {
        "trl": ("trl-baseline", "carried"),
        "peft": ("trl-baseline", "fallback"),
        "pyarrow": ("trl-baseline", "checked"),
    }
    assert {need.name: need.requirement for need in needs}["pyarrow"] == ">=21"


def test_the_cuda_stack_is_never_carried_even_where_the_image_lacks_it():
    lookup = venv(torch=("2.15", ["triton==3.6", "nvidia-cublas"]))
    needs = resolve({"trainer": ["torch"]}, {"torch": ">=2.5,<3"}, {}, lookup)
    assert roles(needs) == {"torch": ("trainer", "checked")}


def test_a_later_feature_that_needs_a_newer_image_package_carries_it_as_its_own():
    lookup = venv(
        accelerate=("1.16", ["safetensors>=0.8"]),
        trl=("1.16", ["accelerate>=1.16"]),
        safetensors=("0.8", []),
    )
    image = {"accelerate": "1.15", "safetensors": "0.7"}
    needs = resolve({"trainer": ["accelerate"], "trl-baseline": ["trl"]}, {"accelerate": ">=1.6"}, image, lookup)
    assert roles(needs) == {
        "accelerate": ("trl-baseline", "carried"),  # the image's 1.15 does for the trainer, not for trl
        "trl": ("trl-baseline", "carried"),
        "safetensors": ("trl-baseline", "carried"),
    }


def test_requirements_for_extras_or_other_pythons_are_left_out():
    lookup = venv(
        datasets=("5.2", ['s3fs; extra == "s3"', 'tomli; python_version < "3.11"', 'dill; python_version >= "3.13"']),
        dill=("0.4", []),
    )
    needs = resolve({"trl-baseline": ["datasets"]}, {}, {}, lookup, pythons=("3.11", "3.12", "3.13"))
    assert roles(needs) == {"datasets": ("trl-baseline", "carried"), "dill": ("trl-baseline", "carried")}


def test_a_venv_outside_the_requirement_is_refused():
    lookup = venv(transformers=("5.17.0", []))
    with pytest.raises(CarryError, match=r"transformers 5\.17\.0 is not in"):
        resolve({"trainer": ["transformers"]}, {"transformers": ">=5.24"}, {}, lookup)


def test_the_trainer_imports_are_exactly_the_listed_ones():
    """TRAINER_IMPORTS and LAZY_IMPORTS cover every third-party import of the trainer and of the API it uses."""
    sources = [
        *REPO.glob("trainer-image/finetune_trainer/**/*.py"),
        *REPO.glob("core/finetune_core/**/*.py"),
        *REPO.glob("core/finetune_core/api/*.py"),
    ]
    modules = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    third_party = (
        modules
        - set(sys.stdlib_module_names)
        - {"__future__", "finetune_trainer", "finetune_core", "finetune_operator"}
    )
    distributions = metadata.packages_distributions()
    imported = {canonicalize_name(distributions[module][0]) for module in third_party}
    assert imported == set(TRAINER_IMPORTS) | set(LAZY_IMPORTS)


# ---------------------------------------------------------------------------------------------
# plan_carry


def wheel(name: str, size_mib: float, feature: str = "trainer", python: str | None = None) -> Wheel:
    tag = f"cp{python.replace('.', '')}" if python else "py3"
    return Wheel(name, "1.0", f"{name}-1.0-{tag}-none-any.whl", int(size_mib * MIB), feature, "carried", "", python)


WHEELS = [
    wheel("transformers", 13),
    *(wheel("pydantic-core", 2, python=python) for python in ("3.11", "3.12", "3.13")),
    wheel("trl", 1, "trl-baseline"),
    *(wheel("multiprocess", 0.5, "trl-baseline", python) for python in ("3.11", "3.12", "3.13")),
    wheel("bitsandbytes", 43, "qlora"),
]


def test_everything_is_kept_when_it_fits():
    plan = plan_carry(WHEELS, budget=70 * MIB, primary_python="3.12")
    assert plan.kept == WHEELS and not plan.dropped and not plan.skipped
    assert plan.size == int(64.5 * MIB)


def test_qlora_goes_first_and_says_so():
    plan = plan_carry(WHEELS, budget=60 * MIB, primary_python="3.12")
    assert [w.name for w in plan.dropped] == ["bitsandbytes"]
    assert plan.skipped == ["QLoRA is not checked: bitsandbytes does not fit the carry"]


def test_then_the_trl_baseline_then_the_other_pythons_older_first():
    plan = plan_carry(WHEELS, budget=17.5 * MIB, primary_python="3.12")
    assert [(w.name, w.python) for w in plan.dropped] == [
        ("bitsandbytes", None),
        ("trl", None),
        ("multiprocess", "3.11"),
        ("multiprocess", "3.12"),
        ("multiprocess", "3.13"),
        ("pydantic-core", "3.11"),
    ]
    assert plan.skipped[1].startswith("the benchmark runs our trainer alone")
    assert plan.skipped[2] == "Python 3.11 is not covered: its wheels (pydantic-core) do not fit"
    assert [(w.name, w.python) for w in plan.kept] == [
        ("transformers", None),
        ("pydantic-core", "3.12"),
        ("pydantic-core", "3.13"),
    ]


def test_the_trainer_own_wheels_for_the_image_python_are_never_dropped():
    with pytest.raises(CarryError, match=r"the trainer's own wheels take 15\.0 MiB"):
        plan_carry(WHEELS, budget=14 * MIB, primary_python="3.12")


@pytest.mark.parametrize(
    ("filename", "python"),
    [
        ("pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", "3.12"),
        ("multiprocess-0.70.19-py313-none-any.whl", "3.13"),
        ("psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.whl", None),
        ("transformers-5.24.0-py3-none-any.whl", None),
        ("six-1.17.0-py2.py3-none-any.whl", None),
    ],
)
def test_the_python_a_wheel_is_built_for(filename, python):
    assert wheel_python(filename) == python


def test_bitsandbytes_keeps_only_the_cuda_major_and_cpu_kernels(tmp_path):
    libraries = ["cpu", "cuda118", "cuda128", "cuda130", "cuda132", "rocm72", "xpu2026"]
    files = [*(f"bitsandbytes/libbitsandbytes_{lib}.so" for lib in libraries), "bitsandbytes/__init__.py"]
    path = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name in files:
            archive.writestr(name, b"x")
        record = "".join(f"{name},sha256=abc,1\n" for name in files) + "bitsandbytes-0.50.2.dist-info/RECORD,,\n"
        archive.writestr("bitsandbytes-0.50.2.dist-info/RECORD", record)

    slim_bitsandbytes(path, cuda_major=13)

    with zipfile.ZipFile(path) as archive:
        kept = set(archive.namelist())
        record = archive.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    expected = {
        "bitsandbytes/__init__.py",
        "bitsandbytes/libbitsandbytes_cpu.so",
        "bitsandbytes/libbitsandbytes_cuda130.so",
        "bitsandbytes/libbitsandbytes_cuda132.so",
        "bitsandbytes-0.50.2.dist-info/RECORD",
    }
    assert kept == expected
    assert {line.split(",")[0] for line in record.splitlines()} == expected


# ---------------------------------------------------------------------------------------------
# the installer, with real pip, offline


def write_wheel(directory: Path, name: str, version: str, tag: str = "py3-none-any") -> str:
    filename = f"{name}-{version}-{tag}.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(directory / filename, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return filename


def entry(name: str, version: str, file: str, requirement: str, python: str | None = None) -> dict:
    return {"name": name, "version": version, "file": file, "requirement": requirement, "python": python}


@pytest.fixture
def carry(tmp_path: Path) -> Path:
    folder = tmp_path / "carry"
    folder.mkdir()
    manifest = {
        "wheels": [
            entry("gpucheck-probe", "1.0", write_wheel(folder, "gpucheck_probe", "1.0"), ">=1.0"),
            # This venv's pytest will do: its carried stand-in is installed only when preferred.
            entry("pytest", "1.0", write_wheel(folder, "pytest", "1.0"), ">=1.0"),
            entry("only-for-3-99", "1.0", write_wheel(folder, "only_for_3_99", "1.0", "cp399-cp399-any"), "", "3.99"),
        ],
        "checked": [{"name": "gpucheck-absent", "requirement": ">=2"}],
        "skipped": ["QLoRA is not checked: bitsandbytes does not fit the carry"],
    }
    (folder / "carry.json").write_text(json.dumps(manifest))
    return folder


def test_the_installer_installs_only_what_this_python_lacks_and_it_imports_from_there(carry, tmp_path):
    site = tmp_path / "site"
    decided = install(carry, site)

    assert decided["installed"] == ["gpucheck-probe 1.0"]
    assert decided["kept_from_image"] == [f"pytest {metadata.version('pytest')}"]
    assert decided["no_wheel_for_this_python"] == ["only-for-3-99"]
    assert decided["skipped_by_carry"] == ["QLoRA is not checked: bitsandbytes does not fit the carry"]
    imported = subprocess.run(
        [sys.executable, "-c", "import gpucheck_probe; print(gpucheck_probe.VERSION)"],
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == "1.0"


def test_the_check_after_installing_names_what_is_still_missing(carry, tmp_path):
    site = tmp_path / "site"
    assert "gpucheck-probe missing, needs >=1.0" in problems(carry, site)
    install(carry, site)
    assert problems(carry, site) == ["gpucheck-absent missing, needs >=2", "only-for-3-99 missing, needs any version"]


def test_preferring_the_carried_wheels_installs_them_over_the_machine_own(carry, tmp_path):
    decided = install(carry, tmp_path / "site", prefer_carried=True)
    assert decided["installed"] == ["gpucheck-probe 1.0", "pytest 1.0"]
