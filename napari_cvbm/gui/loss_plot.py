"""A small live plot of the training losses and the held-out Dice, redrawn at most a few times a second."""

from typing import Dict, List, Optional

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

REDRAW_MS = 250  # at most 4 redraws a second keeps the GUI responsive
DICE_COLOR = "#f5c211"


class LossPlot(QWidget):
    """Each loss term vs the global iteration; a dashed line marks where self-training starts. The
    held-out Dice, when there is one, has its own axis (0..1, right) with a marker per validation."""

    def __init__(self, parent: Optional[QWidget] = None, background: str = "#262930",
                 foreground: str = "#f0f1f2"):
        super().__init__(parent)
        self.figure = Figure(figsize=(3.2, 2.6), facecolor=background, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.axes = self.figure.add_subplot()
        self.dice_axes = self.axes.twinx()
        self.dice_axes.set_visible(False)  # until the first held-out Dice
        self._style(background, foreground)
        # the constrained layout costs ~20 ms a draw: run it only after a resize or a legend change
        self.canvas.mpl_connect("resize_event", self._relayout)
        self.canvas.mpl_connect("draw_event", lambda _: self.figure.set_layout_engine("none"))
        self.series: Dict[str, List[List[float]]] = {}
        self._lines = {}
        self.dice: List[List[float]] = [[], []]
        self._dice_line = None
        self._marks = []
        self._legend_artist = None
        self.redraws = 0
        self._dirty = False
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self._redraw)

    def _style(self, background: str, foreground: str):
        ax = self.axes
        ax.set_facecolor(background)
        ax.set_xlabel("iteration", color=foreground, fontsize=8)
        ax.set_ylabel("loss", color=foreground, fontsize=8)
        ax.tick_params(colors=foreground, labelsize=7)
        for spine in [*ax.spines.values(), *self.dice_axes.spines.values()]:
            spine.set_color(foreground)
        self.dice_axes.set_ylim(0, 1)
        self.dice_axes.set_ylabel("held-out Dice", color=DICE_COLOR, fontsize=8)
        self.dice_axes.tick_params(colors=foreground, labelsize=7)
        self._foreground = foreground

    def clear(self, total: int, selftrain_start: Optional[int] = None):
        """Forget all points and span 0..``total`` iterations; ``selftrain_start`` marks the phase boundary."""
        for artist in [*self._lines.values(), *self._marks, *([self._dice_line] if self._dice_line else [])]:
            artist.remove()
        self._lines.clear()
        self._marks.clear()
        self.series.clear()
        self.dice, self._dice_line = [[], []], None
        self.dice_axes.set_visible(False)
        self.axes.set_xlim(0, max(total, 1))
        if selftrain_start is not None:
            self._marks = [
                self.axes.axvline(selftrain_start, color=self._foreground, lw=0.8, ls="--", alpha=0.6),
                self.axes.text(selftrain_start, 0.97, " self-training", transform=self.axes.get_xaxis_transform(),
                               color=self._foreground, fontsize=7, alpha=0.8, va="top")]
        self._mark_dirty()

    def add(self, step: int, losses: Dict[str, float]):
        """Append one training step's loss terms (plotted at the next redraw)."""
        for key, value in losses.items():
            xs, ys = self.series.setdefault(key, [[], []])
            xs.append(step)
            ys.append(value)
        self._mark_dirty()

    def add_dice(self, step: int, dice: float):
        """Append a held-out Dice at ``step`` (0: the starting model)."""
        self.dice[0].append(step)
        self.dice[1].append(dice)
        self._mark_dirty()

    def _mark_dirty(self):
        self._dirty = True
        if not self._timer.isActive():
            self._timer.start()

    def _redraw(self):
        if not self._dirty:
            self._timer.stop()
            return
        self._dirty = False
        for key, (xs, ys) in self.series.items():
            if key not in self._lines:
                total = key == "total"
                self._lines[key], = self.axes.plot([], [], label=key, lw=1.8 if total else 0.9,
                                                   color=self._foreground if total else None)
                self._legend()
            self._lines[key].set_data(xs, ys)
        if self.dice[0]:
            if self._dice_line is None:
                self.dice_axes.set_visible(True)
                self._dice_line, = self.dice_axes.plot([], [], label="held-out Dice", color=DICE_COLOR, lw=1.2,
                                                       marker="o", ms=3.5)
                self._legend()
            self._dice_line.set_data(*self.dice)
        self.axes.relim()
        self.axes.autoscale_view(scalex=False)
        self.canvas.draw_idle()
        self.redraws += 1

    def _relayout(self, *_):
        self.figure.set_layout_engine("constrained")

    def _legend(self):
        """One legend below the axes, so it never hides a curve."""
        self._relayout()
        if self._legend_artist is not None:
            self._legend_artist.remove()
        self._legend_artist = self.figure.legend(fontsize=6, ncol=5, loc="outside lower center", frameon=False,
                                                 handlelength=1.2, columnspacing=0.8, labelcolor=self._foreground)
