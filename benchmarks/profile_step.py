"""Where a training step's time goes: an op profile and the convolutions' own throughput.

    python benchmarks/profile_step.py [--dim 2] [--phase selftrain] [--float32] [--channels-last] [--width N]
    python benchmarks/profile_step.py --layers [--dim 2] [--float32]
    python benchmarks/profile_step.py --batching [--dim 2] [--float32]

Profiles ``--steps`` steps of one phase of the ``cpu`` preset (torch.profiler, self time per ATen
op) and prints the step time, the step's FLOPs against the dense conv limit of ``speed.py`` (same
precision), and the time and throughput of the convolution kernels alone. ``--layers`` instead
times the operations of one 16-channel network block (conv, InstanceNorm, activation, max-pool),
forward + backward, in both memory layouts, with the incoming gradient in the same layout as the
activations, as inside the network. ``--batching`` times the student's forward + backward on its
batch in one pass against two passes over the halves (the two cut-mix inputs, spec 3).
"""

import argparse
import time

import torch
import torch.nn.functional as F
from speed import _cases, conv_limit
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from napari_cvbm.core.acceleration import seconds_per_call, training_step_seconds
from napari_cvbm.core.checkpoint import build_model
from napari_cvbm.core.config import preset
from napari_cvbm.core.device import autocast, autocast_dtype, precision_name
from napari_cvbm.core.training import TrainingRun

SHAPES = {3: (48, 64, 64), 2: (8, 160, 160)}  # the volumes speed.py trains on


def _is_conv(name: str) -> bool:
    return "conv" in name


def profile_phase(dim, phase, steps, device, shape=None, **variant):
    """Step time, FLOPs and the ops' self time (ms per step) of ``steps`` steps of ``phase``."""
    config = preset("cpu", dim, pretrain_iterations=steps + 2, selftrain_iterations=steps + 2,
                    checkpoint_every=10 ** 6, validate_every=10 ** 6, **variant)
    cases = _cases(dim, shape or SHAPES[dim], 2, 0)
    events = TrainingRun(config, cases, cases, device=str(device)).events()
    if phase == "selftrain":
        for _ in range(config.pretrain_iterations):
            next(events)
    next(events)  # warm-up
    with FlopCounterMode(display=False) as counter:
        next(events)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            next(events)
    seconds = (time.perf_counter() - start) / steps
    ops = {e.key: e.self_cpu_time_total / steps / 1000 for e in prof.key_averages()}
    conv_flops = sum(v for k, v in counter.get_flop_counts()["Global"].items() if _is_conv(str(k)))
    return {"ms_per_step": 1000 * seconds, "gflop": counter.get_total_flops() / 1e9,
            "conv_gflop": conv_flops / 1e9, "profiled_ms": sum(ops.values()),
            "conv_ms": sum(ms for k, ms in ops.items() if _is_conv(k)),
            "ops_ms": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


def _forward_backward(op, x, device, amp, repeats):
    """Seconds for op(x) forward + backward, the gradient in x's layout (as inside a network)."""
    def step():
        with autocast(device, amp):
            y = op(x)
        y.backward(torch.ones_like(y))
    return seconds_per_call(step, device, repeats)


def layer_ops(dim, device, amp, repeats=10):
    """ms forward + backward of each op of a 16-channel block, per memory layout."""
    conv_cls, pool = (torch.nn.Conv2d, F.max_pool2d) if dim == 2 else (torch.nn.Conv3d, F.max_pool3d)
    shape = (16, 16, 128, 128) if dim == 2 else (2, 16, 32, 96, 96)
    layouts = {"contiguous": torch.contiguous_format,
               "channels-last": torch.channels_last if dim == 2 else torch.channels_last_3d}
    out = {}
    for name, layout in layouts.items():
        conv = conv_cls(16, 16, 3, padding=1).to(device, memory_format=layout)
        norm = torch.nn.GroupNorm(16, 16).to(device)  # the networks' InstanceNorm
        x = torch.randn(shape, device=device, dtype=(amp and autocast_dtype(device)) or torch.float32)
        x = x.contiguous(memory_format=layout).requires_grad_(True)
        ops = {"conv 3x3": conv, "InstanceNorm": norm, "LeakyReLU": F.leaky_relu,
               "max-pool 2": lambda t: pool(t, 2)}
        out[name] = {op: 1000 * _forward_backward(fn, x, device, amp, repeats) for op, fn in ops.items()}
    return out


def batching(dim, device, amp, repeats=4):
    """Seconds per student forward + backward: the whole batch at once, and as two half batches."""
    config = preset("cpu", dim)
    model, size = build_model(config), config.slice_size or config.patch_size
    batch, channels = config.batch_labeled, model.in_channels
    one = training_step_seconds(model, (batch, channels, *size), device, amp, False, repeats)
    halves = 2 * training_step_seconds(model, (batch // 2, channels, *size), device, amp, False, repeats)
    return {"one batch": one, "two halves": halves}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, choices=(2, 3), default=2)
    parser.add_argument("--phase", choices=("pretrain", "selftrain"), default="selftrain")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--float32", action="store_true", help="no mixed precision")
    parser.add_argument("--channels-last", action="store_true", help="channels-last layout")
    parser.add_argument("--width", type=int, help="network width (default: the preset's)")
    parser.add_argument("--layers", action="store_true", help="time one block's ops in both layouts")
    parser.add_argument("--batching", action="store_true", help="one student batch against two halves")
    parser.add_argument("--top", type=int, default=15, help="ops to list")
    args = parser.parse_args(argv)
    device, amp = torch.device("cpu"), not args.float32
    precision = precision_name(device, amp)
    if args.layers:
        for layout, ops in layer_ops(args.dim, device, amp).items():
            print(f"{args.dim}D {precision} {layout}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ops.items()))
        return 0
    if args.batching:
        seconds = batching(args.dim, device, amp)
        print(f"{args.dim}D {precision} student forward + backward: " + ", ".join(
            f"{k} {1000 * v:.0f} ms" for k, v in seconds.items())
              + f"; one batch is {seconds['two halves'] / seconds['one batch']:.2f}x as fast")
        return 0
    variant = dict(amp=amp, channels_last=args.channels_last) | ({"width": args.width} if args.width else {})
    r = profile_phase(args.dim, args.phase, args.steps, device, **variant)
    limit = conv_limit(device, args.dim, 2, amp)
    layout = "channels-last" if args.channels_last else "contiguous"
    if args.width:
        layout += f", width {args.width}"
    step_s, conv_s = r["ms_per_step"] / 1000, r["conv_ms"] / 1000
    print(f"cpu {args.dim}D {args.phase}, {precision}, {layout}: {r['ms_per_step']:.0f} ms/step, "
          f"{r['gflop']:.1f} GFLOP ({r['gflop'] / step_s:.0f} GFLOP/s, "
          f"{100 * r['gflop'] / step_s / limit:.0f}% of the {limit:.0f} GFLOP/s conv limit)")
    print(f"convolution kernels: {r['conv_ms']:.0f} ms/step ({100 * r['conv_ms'] / r['profiled_ms']:.0f}% "
          f"of the profiled time), {r['conv_gflop'] / conv_s:.0f} GFLOP/s "
          f"({100 * r['conv_gflop'] / conv_s / limit:.0f}% of the limit)")
    print(f"{'op (self time)':<44}{'ms/step':>9}{'share':>8}")
    for name, ms in list(r["ops_ms"].items())[:args.top]:
        print(f"{name[:43]:<44}{ms:>9.1f}{100 * ms / r['profiled_ms']:>7.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
