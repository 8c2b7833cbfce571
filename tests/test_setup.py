"""What scripts/setup.sh leaves behind: the runner venvs share one copy of torch's files."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENVS = [".venv", ".venv-compress", ".venv-compress-onnx", ".venv-serve"]
LIBRARY = "lib/python3.11/site-packages/torch/lib/libtorch_cpu.so"


def test_every_runner_venv_links_the_same_torch_library_file():
    """Four copies of torch with its CUDA libraries would need about 20 GB more per clone (CI ran
    out of disk once). Pairwise hardlink calls left all but the last venv with copies of their own."""
    present = [REPO / v / LIBRARY for v in VENVS if (REPO / v / LIBRARY).is_file()]
    if len(present) < 2:
        pytest.skip("fewer than two venvs here (LLMOPS_SKIP_RUNNER_VENVS=1): nothing to share")
    inodes = {p.parent.parents[4].name: p.stat().st_ino for p in present}
    assert len(set(inodes.values())) == 1, inodes
