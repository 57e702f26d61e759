"""The benchmark scripts run (tiny sizes here); their figures are read by people, not asserted on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_gpu_check(*arguments: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *arguments],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_gpu_check_runs_at_small_size_on_the_cpu():
    output = run_gpu_check("--size", "small", "--device", "cpu", "--batch", "2", "--nfe", "4", "--repeats", "1")
    assert re.search(r"^static\s+[\d.]+ images/s", output, re.M)
    assert re.search(r"^adaptive\s+[\d.]+ images/s .* policy share [\d.]+%", output, re.M)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_check_full_size_in_bf16():
    output = run_gpu_check("--size", "full", "--device", "cuda", "--dtype", "bf16", "--batch", "64", "--nfe", "16")
    assert "DiT full (675" in output and re.search(r"^adaptive\s+[\d.]+ images/s", output, re.M)
