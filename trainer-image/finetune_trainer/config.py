"""Reading the resolved trainer configuration (the operator's ConfigMap) with the shared api model."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from finetune_core.api import TrainerConfig, format_validation_error
from pydantic import ValidationError

from .errors import ConfigError


@dataclass(frozen=True)
class LoadedConfig:
    config: TrainerConfig
    sha256: str  # of the canonical JSON (sorted keys), so formatting changes do not change it


def load_config(path: Path) -> LoadedConfig:
    """Parse and validate ``path``; every problem becomes one ConfigError line naming the field."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the trainer configuration {path}: {error.strerror}") from error
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from error
    try:
        config = TrainerConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(format_validation_error(error))
        raise ConfigError(f"{path}: invalid trainer configuration: {problems}") from error
    return LoadedConfig(config=config, sha256=config_sha256(config))


def config_sha256(config: TrainerConfig) -> str:
    canonical = json.dumps(config.to_api(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
