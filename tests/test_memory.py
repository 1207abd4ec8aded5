"""Sliding-window inference keeps memory bounded: it needs far less than one whole-volume forward."""

import subprocess
import sys

SCRIPT = r"""
import re, sys, numpy as np
from napari_cvbm.core.config import preset
from napari_cvbm.core.checkpoint import build_model
from napari_cvbm.core.inference import predict
config = preset("cpu", 3)  # width 8, windows of 32x48x48
model = build_model(config)
image = np.random.default_rng(0).normal(size=(64, 256, 256)).astype(np.float32)
window = config.patch_size if sys.argv[1] == "sliding" else image.shape  # whole volume at once
def high_water_kb():  # this process image's peak RSS (ru_maxrss would carry the forking parent's)
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
before = high_water_kb()
pred = predict(model, image, heads="fg", patch_size=window, overlap=0.25, amp=False)  # float32: the same
# activation size for both ways, wherever bfloat16 is available
assert pred.labels.shape == image.shape
print("GROWTH_MB", (high_water_kb() - before) / 1024)
"""


def _growth(mode):
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return float(next(line for line in result.stdout.splitlines() if line.startswith("GROWTH_MB")).split()[1])


def test_sliding_window_needs_far_less_memory_than_a_whole_forward():
    sliding, whole = _growth("sliding"), _growth("whole")
    print(f"peak memory growth: sliding window {sliding:.0f} MB, whole-volume forward {whole:.0f} MB")
    assert sliding < 0.5 * whole
