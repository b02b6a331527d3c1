"""The benchmarks still start: each one's imports and arguments, through its --help (a benchmark run takes
minutes, so the suite does not run them; an import of a name since renamed broke one unnoticed)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_starts(name):
    run = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=REPO, env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout
