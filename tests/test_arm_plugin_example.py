"""The example plugin in examples/arm_plugin: an arm from another package, found by entry point.

Skipped unless it is installed (``pip install -e examples/arm_plugin``); then its own test suite
runs in a subprocess (a clean interpreter, so it sees the entry points as a user would).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "arm_plugin"


def test_entry_point_registers_the_arm():
    mod = pytest.importorskip(
        "ptychobench_arm_example", reason="pip install -e examples/arm_plugin to run this test"
    )
    from ptychobench.arms import ArmError, arm_types, resolve

    assert "Backprojection" in arm_types()
    arm = resolve("Backprojection", {"iterations": 3})
    assert type(arm) is mod.BackprojectionArm and arm.settings.iterations == 3
    with pytest.raises(ArmError, match=r"^arms\.Backprojection\.nope: "):
        resolve("Backprojection", {"nope": 1})


def test_plugin_test_suite_passes():
    pytest.importorskip(
        "ptychobench_arm_example", reason="pip install -e examples/arm_plugin to run this test"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN / "tests")],
        cwd=PLUGIN,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
