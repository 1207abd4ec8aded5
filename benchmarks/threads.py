"""Training under load: seconds per step of the 3D `cpu` preset by CPU thread setting, alone, beside
a busy process and two at once.

    python benchmarks/threads.py [--steps 40] [--max-seconds 40] [--json docs/benchmarks/threads_cpu.json]

Prints figures and asserts nothing. Every training runs in a fresh process (thread settings are
process-wide): it loads the bundled labeled sample volumes, takes two untimed warm-up steps, then
times up to --steps pre-training steps, stopping early once --max-seconds have passed (the table
says how many steps were timed). Thread settings: torch's default, each count from 1 to
os.cpu_count(), and the policy of napari_cvbm/core/threads.py as `cvbm train` applies it
(`console.train_with_progress`: chosen before the first step, looked at again every few seconds).
Conditions:
- alone;
- beside a busy process: a Python loop spinning on one core, started a second before the training
  (so that the policy can see it) and killed after it; it stops by itself after a while anyway;
- two at once: two trainings started together, each with the same setting.
The ratio divides seconds per step by those of the alone / default row; "load before" is the cores
other processes kept busy in the second before each condition (napari_cvbm.core.threads.busy_cores),
which should be near 0 for the figures to mean what they say.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

WARMUP = 2
SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # unset in the workers: torch's own default


def worker(setting: str, steps: int, max_seconds: float) -> dict:
    """One training in this process; ``setting``: "default", "policy" or a thread count."""
    import torch

    from napari_cvbm.core.classes import infer_num_classes
    from napari_cvbm.core.config import preset
    from napari_cvbm.core.data import load_cases
    from napari_cvbm.core.threads import adapt_threads
    from napari_cvbm.core.training import TrainingRun
    from napari_cvbm.synthetic import SAMPLE_DATA

    labeled = load_cases(SAMPLE_DATA / "labeled" / "images", SAMPLE_DATA / "labeled" / "labels")
    config = preset("cpu", 3, num_classes=infer_num_classes(c.label for c in labeled),
                    pretrain_iterations=steps + WARMUP, checkpoint_every=10 ** 6, validate_every=10 ** 6)
    events = TrainingRun(config, labeled, device="cpu").events()
    if setting != "default":  # through the project's policy: a count is an explicit choice there
        events = adapt_threads(events, background=False, threads=None if setting == "policy" else int(setting))
    for _ in range(WARMUP):
        next(events)
    counts, start = [], time.perf_counter()
    while len(counts) < steps and (not counts or time.perf_counter() - start < max_seconds):
        next(events)
        counts.append(torch.get_num_threads())
    seconds = time.perf_counter() - start
    events.close()
    return {"s_per_step": seconds / len(counts), "steps": len(counts), "threads_first": counts[0],
            "threads_last": counts[-1], "threads_min": min(counts), "threads_max": max(counts)}


def launch(setting: str, args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    command = [sys.executable, __file__, "--worker", setting, "--steps", str(args.steps),
               "--max-seconds", str(args.max_seconds)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def collect(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


@contextmanager
def busy_core(seconds: float):
    """A process spinning on one core for at most ``seconds``, killed on leaving."""
    proc = subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)])
    time.sleep(1.0)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def threads_shown(setting: str, job: dict) -> str:
    first, last = job["threads_first"], job["threads_last"]
    counts = str(first) if job["threads_min"] == job["threads_max"] else \
        f"{first}->{last} ({job['threads_min']}-{job['threads_max']})"
    return counts if setting.isdigit() else f"{setting} {counts}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed pre-training steps per training (default 40)")
    parser.add_argument("--max-seconds", type=float, default=40.0,
                        help="stop timing a training after this long (default 40)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.steps, args.max_seconds)))
        return

    import torch

    from napari_cvbm.core.threads import busy_cores

    cores = os.cpu_count() or 1
    settings = ["default", *map(str, range(1, cores + 1)), "policy"]
    report = {"cpu_count": cores, "torch": torch.__version__, "torch_default_threads": torch.get_num_threads(),
              "load_average_before": os.getloadavg(), "timed": f"pre-training steps after {WARMUP} warm-up steps",
              "steps": args.steps, "max_seconds": args.max_seconds, "rows": []}
    print(f"{cores} cores, torch {torch.__version__} (default {torch.get_num_threads()} threads), load average "
          + " ".join(f"{x:.2f}" for x in report["load_average_before"]) + f"; timing up to {args.steps} "
          f"pre-training steps (at most {args.max_seconds:.0f} s) per training")

    def record(condition, setting, jobs, load):
        row = {"condition": condition, "setting": setting, "jobs": jobs, "load_before": load,
               "s_per_step": sum(j["s_per_step"] for j in jobs) / len(jobs)}
        report["rows"].append(row)
        print(f"  {condition:<22}{setting:<8}" + ", ".join(f"{j['s_per_step']:.3f} s/step over {j['steps']}"
                                                         for j in jobs), flush=True)

    for setting in settings:
        load = busy_cores(1.0)
        record("alone", setting, [collect(launch(setting, args))], load)
    for setting in settings:
        load = busy_cores(1.0)
        with busy_core(args.max_seconds + 120):
            record("beside a busy core", setting, [collect(launch(setting, args))], load)
    for setting in ("default", "policy"):
        load = busy_cores(1.0)
        jobs = [launch(setting, args) for _ in range(2)]
        record("two at once", setting, [collect(job) for job in jobs], load)

    baseline = report["rows"][0]["s_per_step"]
    print(f"\n{'condition':<22}{'threads':<22}{'steps':>6}{'s/step':>9}{'ratio':>8}{'load before':>13}")
    for row in report["rows"]:
        row["ratio"] = row["s_per_step"] / baseline
        for i, job in enumerate(row["jobs"]):
            name = row["condition"] + (f" (job {i + 1})" if len(row["jobs"]) > 1 else "")
            print(f"{name:<22}{threads_shown(row['setting'], job):<22}{job['steps']:>6}{job['s_per_step']:>9.3f}"
                  f"{job['s_per_step'] / baseline:>8.2f}{row['load_before']:>13.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
