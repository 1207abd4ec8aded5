"""Training progress on a terminal: the CLI, the demo, the benchmarks and the scripts consume a
run's progress events through these, the same way the widgets consume them in napari."""

from typing import Optional

from tqdm import tqdm

from .core.threads import adapt_threads
from .core.training import PHASE_NAMES


def progress_bars(events):
    """Pass a run's progress events through, showing one tqdm bar per training phase."""
    bar, phase = None, None
    try:
        for event in events:
            if event.phase != phase:
                if bar is not None:
                    bar.close()
                phase = event.phase
                bar = tqdm(total=event.total, initial=event.iteration - 1, desc=PHASE_NAMES[phase],
                           unit="it", dynamic_ncols=True)
            bar.update(1)
            postfix = {"loss": f"{event.losses['total']:.3f}"}
            if event.validation_dice is not None:
                postfix["val_dice"] = f"{event.validation_dice:.3f}"
            bar.set_postfix(postfix)
            yield event
    finally:
        if bar is not None:
            bar.close()


def train_with_progress(run, show: bool = True, threads: Optional[int] = None, current: Optional[int] = None):
    """Drive a TrainingRun to the end, with progress bars when ``show``, on the CPU threads of
    ``core/threads.py`` (``threads``: the user's ``--threads``; ``current``: a count already applied)."""
    events = adapt_threads(run.events(), background=False, threads=threads, current=current)
    for _ in progress_bars(events) if show else events:
        pass
