"""The wheels a lent GPU machine lacks for the GPU check: ``make gpu-check`` builds ``.gpu-carry/``.

A lent GPU machine has no network; its image holds PyTorch and much of the Hugging Face stack, but
not pydantic, trl or bitsandbytes, and transformers at 5.17 where the trainer needs 5.24. What it
lacks travels with the working tree (the device tool's ``carry``, 64 MiB with the tree itself).
This module decides what that is, downloads it from PyPI and makes it fit:

- it starts from what the trainer imports at run time (TRAINER_IMPORTS; a test checks the list
  against the trainer's sources), TRL for the benchmark's baseline and bitsandbytes for QLoRA, and
  follows their requirements through this venv's installed distributions: the versions the tests
  ran with are the versions carried;
- a package the image lacks, or holds at a version outside the requirement, is carried
  ("carried"); one it holds at a version nobody recorded is carried as a "fallback" when small,
  which the machine installs only if its own version turns out wrong; a large one (pandas,
  pyarrow) and the CUDA stack (torch, triton, nvidia-*) are "checked" there instead, never carried;
- native wheels go for every Python in PYTHONS (the image's Python was 3.12 when last seen);
- bitsandbytes is slimmed to the CUDA 13 kernels the image's torch (cu130) loads (43 MB to a few);
- if it still does not fit, whole features go, in DROP_ORDER: QLoRA first, then the TRL baseline,
  then the wheels for the Pythons other than the image's; what is skipped is printed and recorded.

The choices are pure functions (``resolve``, ``plan_carry``) over what the venv and PyPI said; the
machine installs the result with benchmarks.carry_install.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from . import REPO

MIB = 1 << 20
DEVICE_TREE_LIMIT = 64 * MIB  # the device tool's limit on the working tree plus the carried paths
MARGIN = 2 * MIB  # files the lead's checkout may hold beside this one's
PRIMARY_PYTHON = "3.12"  # the image's python3 as last seen (/work/.library/device/KINDS.md, 2026-11)
PYTHONS = ("3.11", "3.12", "3.13")  # 3.10 is below the project's requires-python
CARRY_DIR = REPO / ".gpu-carry"
MANIFEST = "carry.json"

# What `python -m finetune_trainer` imports for a job on file:// data (with finetune_core.api), by
# distribution. Imported only for other sources, so never needed by the check: boto3/botocore (s3://),
# pyarrow (Parquet), huggingface_hub (hf://; transformers brings its own need of it).
TRAINER_IMPORTS = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "safetensors",
    "numpy",
    "pydantic",
    "pydantic-core",  # the API models name its schema types; pydantic brings it at its own pinned version
    "prometheus-client",
)
LAZY_IMPORTS = ("boto3", "botocore", "pyarrow", "huggingface-hub")
FEATURES = {
    "trainer": TRAINER_IMPORTS,
    "trl-baseline": ("trl",),  # benchmarks/runners.py: TRL's SFTTrainer (datasets comes with it)
    "qlora": ("bitsandbytes",),
}
DROP_ORDER = ("qlora", "trl-baseline")  # then the Pythons other than PRIMARY_PYTHON, farthest first
SKIPPED_BECAUSE = {
    "qlora": "QLoRA is not checked: bitsandbytes does not fit the carry",
    "trl-baseline": "the benchmark runs our trainer alone, without the TRL baseline: trl and datasets do not fit",
}
# The image's CUDA build is what the check is for: never replaced, only checked.
NEVER_CARRIED = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
FALLBACK_MAX_INSTALLED = 8 * MIB  # an image package of unknown version this small is carried just in case

# The GPU image's packages (KINDS.md, "Python packages already there", read 2026-11-17) and the versions
# a session's `pip list` showed there; None: present, version not recorded.
_IMAGE_VERSIONS = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "transformers": "5.17.0",
    "triton": "3.6.0",
}
_IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
GPU_IMAGE: dict[str, str | None] = {name: _IMAGE_VERSIONS.get(name) for name in _IMAGE_PACKAGES.split()}


class CarryError(Exception):
    """The carry cannot be built as asked (said in one line)."""


# ---------------------------------------------------------------------------------------------
# deciding (pure)


@dataclass(frozen=True)
class Installed:
    """A distribution as this venv holds it."""

    name: str
    version: str
    requires: tuple[str, ...]
    installed_bytes: int


@dataclass(frozen=True)
class Need:
    """A distribution the check needs there, how the machine gets it, and the versions that will do."""

    name: str
    version: str  # the venv's: the one carried
    feature: str
    role: str  # carried | fallback | checked
    requirement: str  # a specifier set; the machine's version must be in it


def resolve(
    features: dict[str, Sequence[str]],
    project_requirements: dict[str, str],
    image: dict[str, str | None],
    lookup: Callable[[str], Installed],
    pythons: Sequence[str] = PYTHONS,
) -> list[Need]:
    """Every distribution the features need there, features in order (the first to carry one owns it).

    ``project_requirements``: name -> specifier from pyproject.toml; ``lookup``: the venv's
    distribution of a name. Requirements of carried distributions are followed; those of the
    image's own packages are the image's business (checked there, not here).
    """
    specifiers: dict[str, SpecifierSet] = {}
    needs: dict[str, Need] = {}
    for feature, names in features.items():
        # One feature at a time: a distribution two features need belongs to the one that is never dropped first.
        queue = deque(
            (canonicalize_name(name), SpecifierSet(project_requirements.get(canonicalize_name(name), "")))
            for name in names
        )
        while queue:
            name, specifier = queue.popleft()
            specifiers[name] = specifiers.get(name, SpecifierSet()) & specifier
            known = needs.get(name)
            installed = lookup(name)
            role = _role(name, installed, image, specifiers[name])
            if known is not None and known.role in (role, "carried"):
                needs[name] = Need(name, known.version, known.feature, known.role, str(specifiers[name]))
                continue
            if not specifiers[name].contains(installed.version, prereleases=True):
                raise CarryError(
                    f"this venv's {name} {installed.version} is not in {specifiers[name]}: run make install"
                )
            # A later feature that makes an image package carried owns it: dropping that feature lets it go.
            needs[name] = Need(name, installed.version, feature, role, str(specifiers[name]))
            if role == "carried":
                queue.extend((canonicalize_name(r.name), r.specifier) for r in _requirements(installed, pythons))
    return list(needs.values())


def _role(name: str, installed: Installed, image: dict[str, str | None], specifier: SpecifierSet) -> str:
    if NEVER_CARRIED.match(name):
        return "checked"
    if name not in image:
        return "carried"
    version = image[name]
    if version is not None:
        return "checked" if specifier.contains(version, prereleases=True) else "carried"
    return "fallback" if installed.installed_bytes <= FALLBACK_MAX_INSTALLED else "checked"


def _requirements(installed: Installed, pythons: Sequence[str]) -> list[Requirement]:
    """Its requirements on Linux x86-64 under any of ``pythons``, extras left out."""
    wanted = []
    for line in installed.requires:
        requirement = Requirement(line)
        marker: Marker | None = requirement.marker
        if marker is None or any(marker.evaluate(_environment(python)) for python in pythons):
            wanted.append(requirement)
    return wanted


def _environment(python: str) -> dict[str, str]:
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "extra": "",
    }


@dataclass(frozen=True)
class Wheel:
    """One carried file."""

    name: str
    version: str
    file: str
    size: int
    feature: str
    role: str
    requirement: str
    python: str | None  # the Python it is built for; None: any


@dataclass
class Plan:
    kept: list[Wheel]
    dropped: list[Wheel] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # what the check will not do, and why

    @property
    def size(self) -> int:
        return sum(wheel.size for wheel in self.kept)


def plan_carry(wheels: Sequence[Wheel], budget: int, primary_python: str = PRIMARY_PYTHON) -> Plan:
    """The wheels that fit ``budget`` bytes: whole features go in DROP_ORDER, then the other Pythons' wheels.

    The trainer's own wheels for ``primary_python`` are never dropped: without them nothing runs.
    """
    others = sorted(
        {wheel.python for wheel in wheels if wheel.python not in (None, primary_python)},
        # Farthest from the image's first; of two as far, the older (images move to newer Pythons).
        key=lambda python: (-abs(Version(python).minor - Version(primary_python).minor), Version(python)),
    )
    plan = Plan(kept=list(wheels))
    for unit in (*DROP_ORDER, *others):
        if plan.size <= budget:
            break
        leaving = [wheel for wheel in plan.kept if unit in (wheel.feature, wheel.python)]
        if not leaving:
            continue
        plan.kept = [wheel for wheel in plan.kept if wheel not in leaving]
        plan.dropped += leaving
        plan.skipped.append(
            SKIPPED_BECAUSE.get(unit)
            or f"Python {unit} is not covered: its wheels ({', '.join(sorted({w.name for w in leaving}))}) do not fit"
        )
    if plan.size > budget:
        raise CarryError(
            f"the trainer's own wheels take {plan.size / MIB:.1f} MiB, more than the {budget / MIB:.1f} MiB left "
            "beside the working tree"
        )
    return plan


def wheel_python(filename: str) -> str | None:
    """The Python a wheel is built for, from its tags (``cp312-cp312``, ``py312``); None for any Python 3."""
    _, _, *rest = filename[: -len(".whl")].split("-")
    python_tag, abi_tag = rest[-3], rest[-2]
    if abi_tag == "abi3":
        return None
    match = re.fullmatch(r"(?:cp|py)3(\d+)", python_tag.split(".")[0])
    return f"3.{match.group(1)}" if match else None


def wheel_name(filename: str) -> str:
    return canonicalize_name(filename.split("-", 1)[0])


# ---------------------------------------------------------------------------------------------
# what this venv and the project say


def venv_lookup(name: str) -> Installed:
    try:
        distribution = metadata.distribution(name)
    except metadata.PackageNotFoundError as error:
        raise CarryError(f"{name} is not installed in this venv (make install)") from error
    files = distribution.files or []
    size = sum(file.size or 0 for file in files)
    return Installed(canonicalize_name(name), distribution.version, tuple(distribution.requires or ()), size)


def project_requirements(pyproject: Path = REPO / "pyproject.toml") -> dict[str, str]:
    """name -> specifier over the project's dependencies and extras (a name in several: all of them)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = [*project["dependencies"], *(line for extra in project["optional-dependencies"].values() for line in extra)]
    specifiers: dict[str, SpecifierSet] = {}
    for line in lines:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        specifiers[name] = specifiers.get(name, SpecifierSet()) & requirement.specifier
    return {name: str(specifier) for name, specifier in specifiers.items()}


def tree_size(repo: Path = REPO) -> int:
    """Bytes of what the device tool sends besides the carry: tracked and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],  # noqa: S607 git on the PATH, our own repo
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    paths = {repo / name.decode() for name in listed if name}
    return sum(path.stat().st_size for path in paths if path.is_file())


# ---------------------------------------------------------------------------------------------
# downloading and slimming


def _platforms() -> list[str]:
    # pip matches a manylinux tag's glibc version exactly; the image's glibc (Ubuntu 24.04) is 2.39.
    tags = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"]
    return tags + [f"manylinux_2_{minor}_x86_64" for minor in range(5, 40)]


def download(needs: Iterable[Need], python: str, into: Path) -> None:
    pins = [f"{need.name}=={need.version}" for need in needs]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--dest", str(into)]
    command += ["--python-version", python, "--implementation", "cp"]
    for platform in _platforms():
        command += ["--platform", platform]
    result = subprocess.run([*command, *pins], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CarryError(f"pip download for Python {python} failed: {result.stderr.strip()[-800:]}")


def slim_bitsandbytes(path: Path, cuda_major: int) -> None:
    """Keep only the CUDA ``cuda_major`` and CPU kernels: the image's torch loads one of them, never ROCm or XPU."""
    keep = re.compile(rf"libbitsandbytes_(cpu|cuda{cuda_major}\d)\.so$")
    drop = re.compile(r"libbitsandbytes_\w+\.so$")
    slim = path.with_suffix(".slim")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
        kept = {
            item.filename for item in source.infolist() if not drop.search(item.filename) or keep.search(item.filename)
        }
        for item in source.infolist():
            if item.filename not in kept:
                continue
            data = source.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "".join(line + "\n" for line in lines if line.split(",", 1)[0] in kept).encode()
            target.writestr(item, data)
    slim.replace(path)


# ---------------------------------------------------------------------------------------------
# building the carry


def build(out: Path, pythons: Sequence[str], primary: str, budget: int, cuda_major: int) -> dict:
    needs = resolve(FEATURES, project_requirements(), GPU_IMAGE, venv_lookup, pythons)
    wanted = [need for need in needs if need.role != "checked"]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    uncovered = []
    for python in [primary, *(p for p in pythons if p != primary)]:
        try:
            download(wanted, python, out)
        except CarryError as error:
            if python == primary:
                raise
            uncovered.append(f"Python {python}: {error}")
    for path in out.glob("bitsandbytes-*.whl"):
        slim_bitsandbytes(path, cuda_major)
    by_name = {need.name: need for need in wanted}
    wheels = []
    for path in sorted(out.glob("*.whl")):
        need = by_name[wheel_name(path.name)]
        wheels.append(
            Wheel(
                need.name,
                need.version,
                path.name,
                path.stat().st_size,
                need.feature,
                need.role,
                need.requirement,
                wheel_python(path.name),
            )
        )
    plan = plan_carry(wheels, budget, primary)
    for wheel in plan.dropped:
        (out / wheel.file).unlink()
    manifest = {
        "primary_python": primary,
        "pythons": list(pythons),
        "budget_bytes": budget,
        "size_bytes": plan.size,
        "bitsandbytes_kernels": f"CUDA {cuda_major}.x and CPU only",
        "wheels": [asdict(wheel) for wheel in plan.kept],
        "dropped": [asdict(wheel) for wheel in plan.dropped],
        "checked": [asdict(need) for need in needs if need.role == "checked"],
        "skipped": plan.skipped + uncovered,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def describe(manifest: dict, tree: int) -> str:
    lines = [f"{'wheel':<72} {'MiB':>6}  feature / role"]
    for wheel in manifest["wheels"]:
        lines.append(f"{wheel['file']:<72} {wheel['size'] / MIB:>6.2f}  {wheel['feature']} / {wheel['role']}")
    lines.append(
        f"carry {manifest['size_bytes'] / MIB:.1f} MiB + working tree {tree / MIB:.1f} MiB of the device tool's "
        f"{DEVICE_TREE_LIMIT / MIB:.0f} MiB ({MARGIN / MIB:.0f} MiB kept free)"
    )
    lines += [
        f"checked there, not carried: {need['name']} {need['requirement'] or '(any)'}" for need in manifest["checked"]
    ]
    lines += [f"SKIPPED: {reason}" for reason in manifest["skipped"]] or ["nothing skipped"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=CARRY_DIR)
    parser.add_argument("--pythons", default=",".join(PYTHONS), help="Pythons to carry native wheels for")
    parser.add_argument("--primary-python", default=PRIMARY_PYTHON, help="the image's Python: never dropped")
    parser.add_argument("--cuda-major", type=int, default=13, help="the CUDA major version of the image's torch")
    args = parser.parse_args(argv)
    tree = tree_size()
    budget = DEVICE_TREE_LIMIT - MARGIN - tree
    try:
        manifest = build(args.out, args.pythons.split(","), args.primary_python, budget, args.cuda_major)
    except CarryError as error:
        print(f"make gpu-check: {error}", file=sys.stderr)
        return 1
    print(describe(manifest, tree))
    relative = args.out.resolve().relative_to(REPO) if args.out.resolve().is_relative_to(REPO) else args.out
    print(
        f"\nOn the lent machine (device tool run, carry [{relative}]):\n"
        f"  PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --carry {relative} --out $OUT"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
