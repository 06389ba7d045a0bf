"""Two safetensors files, tensor by tensor: ``python -m benchmarks.compare_weights A B`` prints one JSON line.

Bitwise equality, and where they differ the largest absolute difference and the tensor it is in, so a
resumed run's adapter can be judged against an uninterrupted one's (and against run-to-run noise).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def compare(first: Path, second: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    a, b = load_file(first), load_file(second)
    if a.keys() != b.keys():
        return {"same_tensors": False, "only_in_first": sorted(a.keys() - b.keys())[:5], "bitwise_equal": False}
    worst, where, differing = 0.0, None, 0
    for name in sorted(a):
        if a[name].shape != b[name].shape:
            return {"same_tensors": False, "shape_differs": name, "bitwise_equal": False}
        if torch.equal(a[name], b[name]):
            continue
        differing += 1
        difference = float((a[name].double() - b[name].double()).abs().max())
        if difference >= worst:
            worst, where = difference, name
    return {
        "same_tensors": True,
        "tensors": len(a),
        "bitwise_equal": differing == 0,
        "differing_tensors": differing,
        "max_abs_diff": worst,
        "max_abs_diff_in": where,
        "max_abs_value": max(float(tensor.double().abs().max()) for tensor in a.values()) if a else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    first, second = (argv if argv is not None else sys.argv[1:])[:2]
    print(json.dumps(compare(Path(first), Path(second))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
