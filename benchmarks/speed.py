"""Speed benchmark: conv limit, training iterations/s with FLOPs, inference, peak memory.

    python benchmarks/speed.py [--device auto] [--quick] [--json docs/performance.json]

Prints a table and writes JSON. Training iterations are timed after warm-up steps; FLOPs per
iteration are counted with torch.utils.flop_counter on one real iteration. "fraction of limit"
divides achieved FLOP/s by the dense conv throughput measured in the same run.
"""

import argparse
import json
import resource
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_cvbm.core.acceleration import seconds_per_call
from napari_cvbm.core.checkpoint import build_model
from napari_cvbm.core.config import preset
from napari_cvbm.core.data import make_case
from napari_cvbm.core.device import autocast, autocast_dtype, choose_device, precision_name
from napari_cvbm.core.inference import predict
from napari_cvbm.core.training import TrainingRun

CONV_SHAPES = {  # (channels, input shape): layers like the networks' own, from wide-shallow to narrow-deep
    3: [(16, (2, 16, 64, 64, 64)), (32, (2, 32, 32, 48, 48)), (64, (2, 64, 16, 24, 24)), (128, (2, 128, 8, 12, 12))],
    2: [(16, (16, 16, 128, 128)), (32, (16, 32, 64, 64)), (64, (16, 64, 32, 32)), (128, (16, 128, 16, 16))],
}


def conv_limit(device, dim, repeats, amp):
    """The machine's limit: best GFLOP/s of dense 3x3(x3) convs (forward + backward) in the
    training's precision (float32, or autocast with ``amp``), over the layer shapes and both
    memory layouts (contiguous and channels-last)."""
    best = 0.0
    layouts = (torch.contiguous_format, torch.channels_last if dim == 2 else torch.channels_last_3d)
    for channels, shape in CONV_SHAPES[dim]:
        for layout in layouts:
            conv = (torch.nn.Conv3d if dim == 3 else torch.nn.Conv2d)(channels, channels, 3, padding=1)
            conv = conv.to(device, memory_format=layout)
            x = torch.randn(shape, device=device).contiguous(memory_format=layout).requires_grad_(True)

            def step(conv=conv, x=x):
                with autocast(device, amp):
                    y = conv(x)
                y.float().sum().backward()

            seconds = seconds_per_call(step, device, repeats)
            with FlopCounterMode(display=False) as counter:
                step()
            best = max(best, counter.get_total_flops() / seconds / 1e9)
    return best


def _cases(dim, shape, n, seed):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        label = np.zeros(shape, np.int64)
        centre = tuple(s // 2 for s in shape)
        label[tuple(slice(c - s // 4, c + s // 4) for c, s in zip(centre, shape))] = 1
        cases.append(make_case(f"c{i}", label + rng.normal(0, 0.5, shape), label))
    return cases


def training_speed(name, dim, device, steps, shape, flops=None, **variant):
    """Per phase: warm-up steps, then ``steps`` timed steps.

    FLOPs per iteration are counted on the first warm-up step, or taken from ``flops`` (per phase;
    for torch.compile, whose kernels the counter does not see). ``variant`` overrides settings
    (amp, channels_last, compile).
    """
    warmup = 3 if variant.get("compile") else 1
    config = preset(name, dim, pretrain_iterations=steps + warmup, selftrain_iterations=steps + warmup,
                    checkpoint_every=10 ** 6, validate_every=10 ** 6, **variant)
    cases = _cases(dim, shape, 2, 0)
    events = TrainingRun(config, cases, cases, device=str(device)).events()
    result = {}
    for phase in ("pretrain", "selftrain"):
        if flops is None:
            with FlopCounterMode(display=False) as counter:
                next(events)
            phase_flops, left = counter.get_total_flops(), warmup - 1
        else:
            phase_flops, left = flops[phase], warmup
        seconds = seconds_per_call(lambda: next(events), device, steps, warmup=left)
        result[phase] = {"it_per_s": 1 / seconds, "ms_per_it": 1000 * seconds, "gflop_per_it": phase_flops / 1e9,
                         "gflop_per_s": phase_flops / seconds / 1e9}
    return result


def variants_for(device, want_compile):
    """Settings compared on this device: both memory layouts, in mixed precision where the device
    has it and in float32, then compile (each on top of the preset's other settings; the first
    variant's FLOPs are reused)."""
    amps = (True, False) if autocast_dtype(device) else (False,)
    variants = {f"{precision_name(device, amp)} {layout}": {"channels_last": cl, "amp": amp}
                for amp in amps for layout, cl in (("contiguous", False), ("channels-last", True))}
    if want_compile:
        variants["compile"] = {"compile": True}
    return variants


def inference_speed(device, shape, repeats):
    from monai.inferers import sliding_window_inference

    config = preset("cpu", 3)
    model = build_model(config).to(device).eval()
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    patch = config.patch_size
    x = torch.from_numpy(image)[None, None].to(device)

    def monai_plain():
        with torch.inference_mode(), autocast(device):
            sliding_window_inference(x, patch, 4, model.forward_fg, overlap=0.5, mode="gaussian")

    out = {}
    float32 = [("fg only, float32 (predict heads=fg amp=False)",
                lambda: predict(model, image, heads="fg", patch_size=patch, device=device, amp=False))]
    for label, fn in (float32 if autocast_dtype(device) else []) + [
        ("fg only (predict heads=fg)", lambda: predict(model, image, heads="fg", patch_size=patch, device=device)),
        ("all three heads (predict heads=all)", lambda: predict(model, image, heads="all", patch_size=patch,
                                                                device=device)),
        ("MONAI sliding_window_inference, plain net", monai_plain),
    ]:
        out[label] = seconds_per_call(fn, device, repeats)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, cpu preset only")
    parser.add_argument("--json", default="benchmarks/speed.json")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    args = parser.parse_args()
    device = choose_device(args.device)
    repeats = 2 if args.quick else 5
    report = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    precisions = {precision_name(device, amp): amp for amp in (False, True)}
    report["conv_limit_gflops"] = {name: {f"{d}d": conv_limit(device, d, repeats, amp) for d in (2, 3)}
                                   for name, amp in precisions.items()}
    presets = [("cpu", 3, (48, 64, 64)), ("cpu", 2, (8, 160, 160))]
    if not args.quick:
        presets += [("paper", 3, (88, 128, 128)), ("paper", 2, (4, 256, 256))]
    report["training"] = {}
    for name, dim, shape in presets:
        steps = 1 if name == "paper" and device.type == "cpu" else repeats * 2
        first = None
        for label, variant in variants_for(device, args.compile).items():
            if name == "paper" and device.type == "cpu" and first is not None:
                continue  # paper presets on a CPU: one timing is enough
            counted = None if first is None else {
                phase: r["gflop_per_it"] * 1e9 for phase, r in report["training"][first].items()}
            first = first or f"{name} {dim}D {label}"
            result = training_speed(name, dim, device, steps, shape, flops=counted, **variant)
            limit = report["conv_limit_gflops"][precision_name(device, variant.get("amp", True))][f"{dim}d"]
            for phase in result.values():
                phase["fraction_of_conv_limit"] = phase["gflop_per_s"] / limit
            report["training"][f"{name} {dim}D {label}"] = result
    report["inference_s_per_volume_88x144x176"] = inference_speed(device, (88, 144, 176), repeats)
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        report["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20

    print(f"device {report['device']}, torch {report['torch']}, {report['threads']} threads")
    for name, limits in report["conv_limit_gflops"].items():
        print(f"dense conv limit (fwd+bwd, {name}): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in limits.items()))
    print(f"{'training':<38}{'phase':<11}{'it/s':>8}{'ms/it':>10}{'GFLOP/it':>10}{'GFLOP/s':>9}{'of limit':>9}")
    for key, phases in report["training"].items():
        for phase, r in phases.items():
            print(f"{key:<38}{phase:<11}{r['it_per_s']:>8.2f}{r['ms_per_it']:>10.0f}{r['gflop_per_it']:>10.1f}"
                  f"{r['gflop_per_s']:>9.1f}{100 * r['fraction_of_conv_limit']:>8.0f}%")
    print("sliding-window inference, 88x144x176 volume, cpu-preset V-Net:")
    for key, seconds in report["inference_s_per_volume_88x144x176"].items():
        print(f"  {key:<45}{seconds:8.2f} s")
    print(f"peak RSS {report['peak_rss_mb']:.0f} MB" + (f", CUDA max allocated {report['cuda_max_allocated_mb']:.0f} MB"
                                                      if "cuda_max_allocated_mb" in report else ""))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
