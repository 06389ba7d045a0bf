"""The verification pod's program: check an artifact on a mounted claim, print the result as the
pod's termination message, where the operator reads it.

    python -m finetune_operator.adapters.volume_check --dir /artifact/<path>

The ModelAdapter's spec arrives in FINETUNE_ADAPTER_SPEC (JSON, as in the API). Exit 0 whatever was
found (a missing directory is a missing artifact); 2 when the pod itself is misconfigured.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from finetune_core.api import ModelAdapterSpec, format_validation_error
from pydantic import ValidationError

from ..render.verifier import SPEC_ENV, TERMINATION_LOG
from ..storage import DEFAULT_DEADLINE_SECONDS, Deadline, FileStore, StorageUnreachable
from .verification import Verification, verify_artifact


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, type=Path, help="the artifact's directory (on the mounted claim)")
    parser.add_argument("--result", type=Path, default=Path(TERMINATION_LOG), help="where the result goes")
    parser.add_argument(
        "--timeout-seconds", type=float, default=DEFAULT_DEADLINE_SECONDS, help="time allowed for all the reads"
    )
    args = parser.parse_args(argv)
    try:
        spec = ModelAdapterSpec.model_validate_json(os.environ.get(SPEC_ENV) or "")
    except ValidationError as error:
        print(f"{SPEC_ENV}: " + "; ".join(format_validation_error(error)), file=sys.stderr)
        return 2
    try:
        verification = verify_artifact(spec, FileStore(f"file://{args.dir}", Deadline(args.timeout_seconds)))
    except StorageUnreachable as problem:  # the deadline, or a volume that cannot be read
        verification = Verification(problem_reason=problem.reason, problem_message=problem.message)
    message = verification.to_message()
    print(message)
    args.result.write_text(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
