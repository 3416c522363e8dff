"""What bench/gpu.sh's first case runs, on the CPU at a tiny size: vs_torchdistill.py's float32,
not-deterministic kdflow variant trains the very student the bare loop trains (so on a GPU the two
compare kdflow's cost per step alone), and --profile prints the calls per training step."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")  # the data the script reads (make data)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_the_fp32_variant_matches_the_bare_loop_and_the_profile_counts_steps(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "vs_torchdistill.py"),
        *("--device", "cpu", "--limit-train", "400", "--teacher-epochs", "1", "--epochs", "1", "--rounds", "1"),
        *("--batch-size", "100", "--threads", "1", "--home", str(tmp_path / "home"), "--workdir", str(tmp_path / "w")),
        *("--accuracy-seeds", "--profile", "3", "--variants", "bare-cached", "kdflow-cached-fp32-nd"),
    ]
    env = {**os.environ, "KDFLOW_HOME": str(tmp_path / "home")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    # 400 images at batch 100: 4 steps an epoch, counted for each profiled variant
    for variant in ("bare-cached", "kdflow-cached-fp32-nd"):
        assert re.search(rf"profile {variant}: 4 training steps; per step .*aten ops \d", text), text[-3000:]
    # and one step alone, op by op: the median of the 3 spans between the epoch's 4 optimizer steps
    per_step = {
        v: int(n) for v, n in re.findall(r"profile (\S+): aten ops per training step, median of 3 .*?: (\d+);", text)
    }
    assert set(per_step) == {"bare-cached", "kdflow-cached-fp32-nd"}, text[-3000:]
    assert per_step["bare-cached"] > 100, per_step  # a whole step counted (forward, backward, optimizer)
    assert per_step["kdflow-cached-fp32-nd"] - per_step["bare-cached"] <= 8, per_step  # kdflow adds next to nothing
    ratio = re.search(r"kdflow-cached-fp32-nd / bare-cached: throughput x[\d.]+, accuracy ([+-][\d.]+) points", text)
    assert ratio is not None, text[-3000:]
    assert ratio.group(1) == "+0.00"  # the same arithmetic in the same order: the same student
