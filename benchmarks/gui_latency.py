"""How responsive napari stays while the Fine-tune widget trains.

A QTimer pings the GUI thread every 20 ms; the lateness of a tick is how much later than
20 ms after the previous tick it fires. Measured once with nothing running (baseline), then
while a fine-tune (cpu preset, limited iterations) trains on the sample data. Prints p50 / p99 /
max lateness in ms and the training steps run, writes JSON, and optionally a screenshot of the
viewer mid-run. Run under a display, e.g.

    xvfb-run -a -s "-screen 0 1400x1000x24" python benchmarks/gui_latency.py --json latency.json \\
        --screenshot docs/finetune_running.png
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

PERIOD_MS = 20


def ping(app, seconds: float, stop_when=lambda: False) -> np.ndarray:
    """Lateness (s) of each 20 ms tick over ``seconds`` (or until ``stop_when()``)."""
    from qtpy.QtCore import QEventLoop, Qt, QTimer

    ticks = []
    loop = QEventLoop()
    timer = QTimer(timerType=Qt.PreciseTimer, interval=PERIOD_MS)
    end = time.perf_counter() + seconds

    def tick():
        now = time.perf_counter()
        ticks.append(now)
        if now >= end or stop_when():
            loop.quit()

    timer.timeout.connect(tick)
    ticks.append(time.perf_counter())
    timer.start()
    loop.exec_()
    timer.stop()
    return np.maximum(np.diff(ticks) - PERIOD_MS / 1000, 0.0)


def timed(obj, name: str, durations: list):
    """Record the duration of every call of ``obj.name`` in ``durations``."""
    method = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    setattr(obj, name, wrapper)


def summary(lateness) -> dict:
    ms = np.asarray(lateness) * 1000
    return {"count": int(ms.size), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def sample_viewer():
    """A viewer with a sample volume, its CVBM 'segmentation' with 3 corrected slices, and 3 unlabeled volumes."""
    import napari
    import napari._qt.qt_main_window as main_window

    from napari_cvbm.core.io import read_image, read_labels
    from napari_cvbm.synthetic import SAMPLE_DATA as data

    main_window.SHOW_QT_WARNING = False  # keep napari's PyQt5 deprecation toast off the screenshot
    viewer = napari.Viewer(title="napari-cvbm fine-tune")
    viewer.window.resize(1400, 950)
    image = read_image(data / "labeled" / "images" / "case_001.nii.gz")
    label = read_labels(data / "labeled" / "labels" / "case_001.nii.gz").array.astype(np.uint8)
    viewer.add_image(image.array, name="case_001", scale=image.spacing)
    for name in ("case_004", "case_005", "case_006"):
        other = read_image(data / "unlabeled" / "images" / f"{name}.nii.gz")
        viewer.add_image(other.array, name=name, scale=other.spacing, visible=False)
    corrected = label.copy()
    corrected[22:25] = np.roll(label[22:25], 2, axis=-1)  # the user redrew these slices
    viewer.add_labels(corrected, name="case_001 segmentation", scale=image.spacing, opacity=0.5,
                      metadata={"cvbm_role": "segmentation", "cvbm_source": "case_001", "cvbm_original": label})
    viewer.dims.set_point(0, 23 * image.spacing[0])
    viewer.layers.selection.active = viewer.layers["case_001 segmentation"]
    return viewer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--train-seconds", type=float, default=60.0,
                        help="measure for this long while training (or until it finishes)")
    parser.add_argument("--pretrain", type=int, default=40)
    parser.add_argument("--selftrain", type=int, default=40)
    parser.add_argument("--json", type=Path, default=Path("gui_latency.json"))
    parser.add_argument("--screenshot", type=Path, help="save the viewer (with the widget) mid-run here")
    args = parser.parse_args(argv)

    from qtpy.QtWidgets import QApplication

    viewer = sample_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvbm", "Fine-tune with unlabeled data")
    app = QApplication.instance()
    draws = []
    timed(widget.progress.loss_plot.canvas, "draw", draws)  # the loss plot's rendering, on the GUI thread
    ping(app, 1.0)  # let the window settle
    viewer.reset_view()
    ping(app, 1.0)
    baseline = ping(app, args.baseline_seconds)

    widget.settings.fields["pretrain_iterations"].value = args.pretrain
    widget.settings.fields["selftrain_iterations"].value = args.selftrain
    if widget.start() is None:
        print("fine-tune did not start:", widget.status.message, file=sys.stderr)
        return 1
    ping(app, 600, stop_when=lambda: widget.status.history or not widget.running)  # data prep + first step
    started, before = time.perf_counter(), len(widget.status.history)
    draws.clear()
    training = ping(app, args.train_seconds, stop_when=lambda: not widget.running)
    seconds = time.perf_counter() - started
    steps = len(widget.status.history) - before
    plot_draws = summary(draws[:] or [0.0])
    if args.screenshot and widget.running:
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.screenshot), canvas_only=False)
    widget.cancel()
    ping(app, 600, stop_when=lambda: not widget.running)

    result = {"period_ms": PERIOD_MS, "baseline": summary(baseline), "training": summary(training),
              "training_seconds": seconds, "training_steps": steps,
              "seconds_per_step": seconds / max(steps, 1), "loss_plot_draw": plot_draws,
              "config": widget.run.config.to_dict()}
    args.json.write_text(json.dumps(result, indent=2))
    for name in ("baseline", "training"):
        s = result[name]
        print(f"{name:9s}: tick lateness p50 {s['p50_ms']:6.1f} ms  p99 {s['p99_ms']:6.1f} ms  "
              f"max {s['max_ms']:6.1f} ms  ({s['count']} ticks)")
    print(f"training : {steps} steps in {seconds:.1f} s while measuring; loss plot drawn {plot_draws['count']} "
          f"times, p50 {plot_draws['p50_ms']:.0f} ms, max {plot_draws['max_ms']:.0f} ms; JSON in {args.json}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
