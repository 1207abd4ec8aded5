"""Speed and memory of segmenting one colour photograph (default 1168×1752 RGB, HRF's size).

    python benchmarks/photo_speed.py [--image ../shared/data/hrf/images/01_dr.jpg] [--model best.pt]
                                     [--device auto] [--repeats 2]

The model is ``--model`` (a checkpoint), else an untrained network of the plan a photograph with
thin structures gets on this device (3 channels, patches at the photo's resolution, sliding
windows; ``core/planning.py``): speed and memory depend on the network and the windows, not on the
weights. Each output (fg head alone, all three heads) is timed in its own process: the best of
``--repeats`` runs, and the peak resident memory the prediction adds to that process.
"""

import argparse
import multiprocessing
import resource
import time

import numpy as np


def _model(path, device):
    import torch

    from napari_cvbm.core.channels import RGB
    from napari_cvbm.core.checkpoint import build_model
    from napari_cvbm.core.config import preset
    from napari_cvbm.core.planning import PATCH_OVERLAP_2D, SLICE_SIDE, base_preset, device_kind
    from napari_cvbm.core.predictor import Predictor

    if path:
        return Predictor.load(path)
    side = SLICE_SIDE[device_kind(torch.device(device))]
    config = preset(base_preset(torch.device(device)), 2, patch_size=(side, side), slice_size=None, in_channels=3,
                    channel_names=RGB, inference_overlap=PATCH_OVERLAP_2D)
    return Predictor(build_model(config), config)


def _measure(args, heads, queue):
    """In a child process: (best seconds, MiB the prediction adds to the peak memory) for ``heads``."""
    from napari_cvbm.core.device import choose_device

    device = str(choose_device(args.device))
    image = _image(args)
    predictor = _model(args.model, device)
    before = _peak_bytes()
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        predictor(image, channels=predictor.config.channel_names, heads=heads, device=device)
        seconds.append(time.perf_counter() - start)
    queue.put((device, min(seconds), (_peak_bytes() - before) / 2 ** 20))


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _image(args) -> np.ndarray:
    if args.image:
        from napari_cvbm.core.io import read_image

        return read_image(args.image).array
    return np.random.default_rng(0).integers(0, 256, (3, *args.size)).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="a colour photograph (default: random pixels of --size)")
    parser.add_argument("--size", type=int, nargs=2, default=(1168, 1752), metavar=("H", "W"))
    parser.add_argument("--model", help="a checkpoint (default: an untrained network of the photo plan)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    for heads in ("fg", "all"):
        queue = context.Queue()
        child = context.Process(target=_measure, args=(args, heads, queue))
        child.start()
        device, seconds, mib = queue.get()
        child.join()
        shape = "×".join(map(str, _image(args).shape[1:]))
        print(f"{shape} RGB on {device}, heads={heads}: {seconds:.1f} s, peak memory +{mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
