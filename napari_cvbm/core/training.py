"""CVBM training: teacher pre-training and student self-training (spec 3-6).

Both phases are generators of :class:`ProgressEvent` so that the CLI, the napari widgets
and ``torchrun`` workers all drive the same loop and can stop it between two steps.
"""

import copy
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from . import distributed
from .acceleration import GradientStep, faster_layout, memory_format, use_channels_last
from .channels import check_channels
from .checkpoint import build_model, load_checkpoint, model_from_payload, nonfinite_tensors, save_checkpoint, save_model
from .config import TrainConfig, resumed_config
from .cutmix import cutmix, cutmix_mask, cutmix_pair
from .data import Case, PatchSampler
from .device import autocast, choose_device, precision_name
from .ema import ema_update
from .errors import CVBMInputError
from .losses import (
    bidirectional_consistency,
    complementary_seg_loss,
    consistency_weight,
    region_wide_loss,
    softmax_seg_loss,
)
from .metrics import dice_score
from .networks import CVBMOutput
from .predictor import Predictor
from .prefetch import Prefetcher
from .pseudo_labels import pseudo_labels
from .resampling import resample_case

PHASES = ("pretrain", "selftrain", "done")
PHASE_NAMES = {"pretrain": "teacher pre-training", "selftrain": "student self-training"}  # spec 5, 6


@dataclass
class ProgressEvent:
    """One training step: the phase, the step within it, every loss term, lambda, lr, time."""

    phase: str
    iteration: int
    total: int
    losses: Dict[str, float]
    consistency_weight: float
    lr: float
    elapsed: float
    validation_dice: Optional[float] = None  # set on steps where validation ran
    best_dice: Optional[float] = None
    messages: List[str] = field(default_factory=list)


def _split(output: CVBMOutput):
    """The two halves (mixed inputs a and b) of a batched output."""
    parts = [t.chunk(2) if t is not None else (None, None) for t in output]
    return CVBMOutput(*(p[0] for p in parts)), CVBMOutput(*(p[1] for p in parts))


def _check_cases(config: TrainConfig, labeled: Sequence[Case], unlabeled: Sequence[Case]):
    if not labeled:
        raise CVBMInputError("no labeled images: training needs at least one image with labels")
    for case in list(labeled) + list(unlabeled):
        if config.dim == 3 and len(case.shape) != 3:
            raise CVBMInputError(f"{case.name}: a 3D model needs 3D volumes, got shape {case.shape}")
        check_channels(config.in_channels, config.channel_names or (), case.channel_names, what=case.name)
    for case in labeled:
        if case.label is None:
            raise CVBMInputError(f"{case.name}: a labeled case has no labels")
        if case.label.max() >= config.num_classes:
            raise CVBMInputError(f"{case.name}: label value {int(case.label.max())} is outside the "
                                 f"model's classes 0..{config.num_classes - 1}")
    # all-background labels teach nothing, unless the user marked them as checked (erased false positives)
    if all(c.annotated is None and not (c.label > 0).any() for c in labeled):
        raise CVBMInputError("the labeled images contain only background: label at least one structure")


class TrainingRun:
    """State of one CVBM run: student, EMA teacher, optimiser, samplers, counters, best weights.

    ``events()`` runs (or resumes) pre-training then self-training; ``initial_weights`` (a state
    dict of the same configuration) starts both from a trained model (fine-tuning). With ``out_dir`` it writes
    ``last.pt`` (resumable, every ``checkpoint_every`` steps), ``pretrained.pt`` (the
    selected supervised-only teacher) and ``best.pt`` (the selected student).
    """

    def __init__(self, config: TrainConfig, labeled: Sequence[Case], unlabeled: Sequence[Case] = (),
                 validation: Sequence[Case] = (), out_dir=None, device=None,
                 initial_weights: Optional[dict] = None):
        _check_cases(config, labeled, unlabeled)
        # at the plan's working spacing (core/planning.py); validation is scored there too
        labeled, unlabeled, validation = ([resample_case(c, config.spacing) for c in group]
                                          for group in (labeled, unlabeled, validation))
        self.config = config
        self.device = distributed.local_device(choose_device(device or "auto"))
        self.main_process = distributed.is_main_process()
        self.precision = precision_name(self.device, config.amp)
        self.validation = list(validation) if self.main_process else []
        self.out_dir = Path(out_dir) if out_dir is not None and self.main_process else None
        self.rng = np.random.default_rng(config.seed + distributed.rank())  # each rank its own patches
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        sampler = dict(dim=config.dim, patch_size=config.patch_size, slice_size=config.slice_size,
                       augment=config.augment, rng=self.rng,
                       rot_flip_probability=config.rot_flip_probability, rotate_degrees=config.rotate_degrees)
        self.labeled = PatchSampler(list(labeled), **sampler)
        # with no separate unlabeled images, the labeled images also serve as unlabeled ones
        pool = [Case(c.name, c.image, spacing=c.spacing, valid=c.valid, channel_names=c.channel_names)
                for c in (unlabeled or labeled)]
        self.unlabeled = PatchSampler(pool, **sampler)
        self.model = build_model(config)
        if initial_weights is not None:  # fine-tuning: start from a trained model of the same config
            self.model.load_state_dict(initial_weights)
        self.channels_last = use_channels_last(config.channels_last, config.dim, self.device, config.amp)
        self.layout_seconds: Optional[Dict[str, float]] = None  # per step, when measured on this device
        if self.channels_last is None:
            batch_shape = (config.batch_labeled, self.model.in_channels, *(config.slice_size or config.patch_size))
            chosen, self.layout_seconds = faster_layout(self.model, batch_shape, self.device, config.amp)
            self.channels_last = distributed.broadcast_flag(chosen, self.device)  # one layout for all ranks
        if distributed.is_distributed() and self.device.type == "cuda":  # BatchNorm over the global batch
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self._place(self.model)
        self.net = self._parallel(self.model)
        if config.compile:
            self.net = torch.compile(self.net)
        self._gradient_step = GradientStep(self.device, config.amp)
        self.teacher: Optional[torch.nn.Module] = None
        self.phase = "pretrain"
        self.iteration = 0
        self.elapsed = 0.0
        self.best_dice = -1.0
        self.best_state: Optional[dict] = None
        self.pretrained_state: Optional[dict] = None
        self.initial_dice: Optional[float] = None  # validation Dice of the starting weights, before any step
        self.pretrained_dice: Optional[float] = None  # validation Dice of the selected teacher
        self.optimizer = self._new_optimizer()
        self._batches: Optional[Prefetcher] = None
        self.resume_changes: List[str] = []  # "name old -> new" for each setting a resumed run changed

    # -- public API ---------------------------------------------------------------------
    def events(self) -> Iterator[ProgressEvent]:
        """Run what is left of the two phases, yielding one event per step; a run with validation
        cases first scores its starting weights (``initial_dice``)."""
        if self.validation and self.initial_dice is None and (self.phase, self.iteration) == ("pretrain", 0):
            self.initial_dice = self._score()
        if self.phase == "pretrain":
            yield from self._loop(self.config.pretrain_iterations, self._pretrain_step, self._draw_labeled)
            self._finish_pretraining()
        if self.phase == "selftrain":
            yield from self._loop(self.config.selftrain_iterations, self._student_step, self._draw_mixed)
            self._finish_selftraining()

    def final_model(self) -> torch.nn.Module:
        """The selected model: best student on validation (or the last one without validation)."""
        model = build_model(self.config)
        model.load_state_dict(self.best_state or self.model.state_dict())
        return model.eval()

    @property
    def final_dice(self) -> Optional[float]:
        """Validation Dice of the model :meth:`final_model` returns once the run is done (None
        without validation); with no self-training, that of the selected teacher."""
        return self.best_dice if self.best_dice >= 0 else self.pretrained_dice

    def pretrained_model(self) -> torch.nn.Module:
        """The selected supervised-only teacher (after pre-training)."""
        if self.pretrained_state is None:
            raise CVBMInputError("pre-training has not finished yet")
        model = build_model(self.config)
        model.load_state_dict(self.pretrained_state)
        return model.eval()

    # -- phases -------------------------------------------------------------------------
    def _loop(self, total: int, step, draw) -> Iterator[ProgressEvent]:
        """Run ``step(batch)`` until ``total``; ``draw()`` prepares each batch one step ahead."""
        start = time.perf_counter() - self.elapsed
        self.model.train()
        self._batches = Prefetcher(draw, self.rng)
        try:
            while self.iteration < total:
                lr = self._set_lr(total)
                losses, lam = step(self._batches.next())
                self.iteration += 1
                self.elapsed = time.perf_counter() - start
                event = ProgressEvent(self.phase, self.iteration, total, losses, lam, lr, self.elapsed)
                cfg = self.config
                if self.validation and (self.iteration % cfg.validate_every == 0 or self.iteration == total):
                    event.validation_dice = self._validate()
                    self.model.train()
                event.best_dice = self.best_dice if self.best_dice >= 0 else None
                if self.out_dir is not None and (self.iteration % cfg.checkpoint_every == 0 or self.iteration == total):
                    self.save(self.out_dir / "last.pt")
                yield event
        finally:  # also when the consumer stops early (Cancel): rewind the generator, stop the thread
            self._batches.close()
            self._batches = None

    def _draw_labeled(self):
        return self.labeled.sample(self.config.batch_labeled)

    def _draw_mixed(self):
        return self.labeled.sample(self.config.batch_labeled), self.unlabeled.sample(self.config.batch_labeled)

    def _pretrain_step(self, batch):
        """Teacher pre-training on two cut-mixed labeled inputs: L_fg + L_bg + L_M (spec 3, 4); the
        annotated region lies inside the field of view."""
        cfg = self.config
        images, labels, annotated = (self._to_device(t) for t in batch[:3])
        mask = cutmix_mask(images.shape[2:], cfg.cutmix_beta, self.generator).to(self.device)
        half = cfg.batch_labeled // 2
        x_a, x_b = cutmix_pair(images[:half], images[half:], mask)
        y_a, y_b = cutmix_pair(labels[:half], labels[half:], mask)
        r_a, r_b = cutmix_pair(annotated[:half], annotated[half:], mask)
        terms: Dict[str, torch.Tensor] = {}
        for output, y, region in zip(_split(self._forward(self.net, torch.cat([x_a, x_b]))), (y_a, y_b), (r_a, r_b)):
            parts = {"fg": softmax_seg_loss(output.fg, y, region)}
            if output.bg is not None:
                parts["bg"] = complementary_seg_loss(output.bg, y, region)
                if cfg.pretrain_mix_head:
                    parts["mix"] = softmax_seg_loss(output.mix, y, region)
            parts["total"] = sum(parts.values())
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + v
        return self._optimise(terms), 0.0

    def _student_step(self, sampled):
        """Student self-training: cut-mix labeled/unlabeled, L_rw + lambda L_bcl, EMA (spec 3-5).

        As in the release, the first halves of the labeled and unlabeled batches make X_hat_a and
        the second halves X_hat_b, so the student sees one batch of ``batch_labeled`` volumes.
        Voxels outside a field of view take no loss at all.
        """
        cfg = self.config
        batch = cfg.batch_labeled
        labeled, unlabeled = sampled
        x_l, y_l, ann = (self._to_device(t) for t in labeled[:3])
        x_u = self._to_device(unlabeled.images)
        v_l, v_u = (torch.ones_like(ann) if b.valid is None else self._to_device(b.valid) for b in sampled)
        masked = labeled.valid is not None or unlabeled.valid is not None
        partial = bool(((ann < 1) & (v_l > 0)).any())
        with torch.no_grad():
            x_t, v_t = (torch.cat([x_u, x_l]), torch.cat([v_u, v_l])) if partial else (x_u, v_u)
            fg_pl, bg_pl = pseudo_labels(self._forward(self.teacher, x_t), clean=cfg.clean_pseudo_labels, valid=v_t)
        fg_u, bg_u = fg_pl[:batch], bg_pl[:batch]
        # unannotated voxels of a partly labeled image are supervised by the teacher, like unlabeled ones
        fg_l = torch.where(ann.bool(), y_l, fg_pl[batch:]) if partial else y_l
        bg_l = torch.where(ann.bool(), y_l, bg_pl[batch:]) if partial else y_l
        mask = cutmix_mask(x_l.shape[2:], cfg.cutmix_beta, self.generator).to(self.device)
        none = torch.zeros_like(ann)
        a, b = slice(0, batch // 2), slice(batch // 2, batch)  # first halves make X_hat_a, second X_hat_b
        mixes = [  # (input, fg target, bg target, labeled region, field of view)
            (cutmix(x_l[a], x_u[a], mask), cutmix(fg_l[a], fg_u[a], mask), cutmix(bg_l[a], bg_u[a], mask),
             cutmix(ann[a], none[a], mask), cutmix(v_l[a], v_u[a], mask)),
            (cutmix(x_u[b], x_l[b], mask), cutmix(fg_u[b], fg_l[b], mask), cutmix(bg_u[b], bg_l[b], mask),
             cutmix(none[b], ann[b], mask), cutmix(v_u[b], v_l[b], mask)),
        ]
        lam = consistency_weight(self.iteration, cfg.selftrain_iterations, cfg.consistency_schedule,
                                 cfg.consistency_weight, cfg.consistency_rampup)
        terms: Dict[str, torch.Tensor] = {}
        outputs = _split(self._forward(self.net, torch.cat([m[0] for m in mixes])))
        for output, (_, fg_t, bg_t, region, valid) in zip(outputs, mixes):
            parts = region_wide_loss(output, fg_t, bg_t, region, valid - region, cfg.alpha,
                                     mix_head=cfg.selftrain_mix_head)
            total = parts["rw"]
            if output.bg is not None:
                parts.update(bidirectional_consistency(output, valid if masked else None))
                total = total + lam * parts["bcl"]
            parts["total"] = total
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + v
        losses = self._optimise(terms)
        ema_update(self.teacher, self.model, cfg.ema_decay)
        return losses, lam

    def _finish_pretraining(self):
        self.pretrained_state = distributed.broadcast_state(self._selected_state(), self.device)
        self.pretrained_dice = self.best_dice if self.best_dice >= 0 else None
        if self.out_dir is not None:
            self._save_weights(self.out_dir / "pretrained.pt", self.pretrained_state, "pretrain")
        self.model.load_state_dict(self.pretrained_state)
        self.teacher = copy.deepcopy(self.model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.phase, self.iteration = "selftrain", 0
        self.best_dice, self.best_state = -1.0, None
        self.optimizer = self._new_optimizer()
        if self.out_dir is not None:
            self.save(self.out_dir / "last.pt")

    def _finish_selftraining(self):
        self.best_state = distributed.broadcast_state(self._selected_state(), self.device)
        self._decide_largest_component()
        self.phase = "done"
        if self.out_dir is not None:
            self._save_weights(self.out_dir / "best.pt", self.best_state, "selftrain")
            self.save(self.out_dir / "last.pt")

    # -- helpers ------------------------------------------------------------------------
    def _parallel(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel under torchrun (gradients all-reduced), the model itself otherwise."""
        if not distributed.is_distributed():
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=not self.config.pretrain_mix_head,
            broadcast_buffers=False)  # buffers are averaged after each step instead

    def _forward(self, net: torch.nn.Module, x: torch.Tensor) -> CVBMOutput:
        """``net(x)`` in mixed precision where enabled, its logits returned in float32, so that
        softmax, the losses and the pseudo-labels are computed in full precision."""
        with autocast(self.device, self.config.amp):
            output = net(x)
        return CVBMOutput(*(t.float() if t is not None else None for t in output))

    def _optimise(self, terms: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """One SGD step on ``terms["total"]``, unless a term is NaN/Inf (the run stops); returns every
        term as a float. BatchNorm running statistics then agree across ranks."""
        losses = {k: float(v.detach()) for k, v in terms.items()}
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            raise self._diverged(f"loss term(s) {', '.join(bad)} became NaN/Inf", self.iteration + 1)
        self._gradient_step(terms["total"], self.optimizer)
        distributed.average_buffers(self.model)
        return losses

    def _finite(self, state: dict) -> dict:
        """``state`` once its weights are checked: a step can turn them NaN/Inf before any loss does,
        so a run stops here, before writing or selecting them."""
        bad = nonfinite_tensors(state)
        if bad:
            raise self._diverged(f"the weights became NaN/Inf ({', '.join(bad[:3])})", self.iteration)
        return state

    def _diverged(self, what: str, step: int) -> CVBMInputError:
        """The error that stops a run whose ``step`` went NaN/Inf."""
        cfg = self.config
        total = cfg.pretrain_iterations if self.phase == "pretrain" else cfg.selftrain_iterations
        cause = (f"it trained in {self.precision} (mixed precision): try amp=false (float32), or a lower "
                 f"learning rate than lr={cfg.lr:g}." if self.precision != "float32"
                 else f"is the learning rate (lr={cfg.lr:g}) too high?")
        return CVBMInputError(
            f"training diverged at {self.phase} iteration {step}/{total}: {what}; {cause} Nothing from this "
            f"step was saved; checkpoints already written are kept")

    def _new_optimizer(self):
        cfg = self.config
        return torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)

    def _set_lr(self, total: int) -> float:
        lr = self.config.lr
        if self.config.lr_schedule == "poly":
            lr *= (1.0 - self.iteration / total) ** 0.9
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _place(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on the training device, channels-last when configured."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=memory_format(self.config.dim))
        return model

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A batch tensor on the training device; images (N, C, ...) channels-last when configured."""
        t = t.to(self.device, non_blocking=True)
        if self.channels_last and t.ndim == self.config.dim + 2:
            t = t.contiguous(memory_format=memory_format(self.config.dim))
        return t

    def _selected_state(self) -> dict:
        return self._finite(self.best_state if self.best_state is not None else _cpu_state(self.model))

    def _decide_largest_component(self):
        """Post-processing as nnU-Net decides it (spec 7): unless the config sets it, the selected
        model keeps each class's largest connected component when that does not lower its
        validation Dice (stray islands are what make surface distances large); off without validation."""
        if self.config.largest_component is not None:
            return
        chosen = False
        if self.validation:
            model = self._place(build_model(self.config))
            model.load_state_dict(self.best_state)
            plain = self.best_dice if self.best_dice >= 0 else self._score(model)  # selected: scored already
            chosen = self._score(model, largest_component=True) >= plain
        self.config = replace(self.config, largest_component=chosen)

    @torch.no_grad()
    def _score(self, model: Optional[torch.nn.Module] = None, largest_component: bool = False) -> float:
        """Mean fg-head Dice of ``model`` (the student) over the validation cases, each scored on its
        annotated voxels only."""
        cfg = self.config
        scores, predictor = [], Predictor(self.model if model is None else model, cfg)
        for case in self.validation:
            pred = predictor(case.image, heads="fg", device=self.device, amp=cfg.amp,
                             largest_component=largest_component)
            labels, truth = pred.labels, case.label
            if case.annotated is not None:  # a partly corrected case counts where it was corrected
                labels, truth = labels[case.annotated], truth[case.annotated]
            scores.append(dice_score(labels, truth, cfg.num_classes))
        return float(np.mean(scores))

    def _validate(self) -> float:
        """:meth:`_score`, keeping the best weights (spec 6)."""
        dice = self._score()
        if dice > self.best_dice:
            self.best_dice, self.best_state = dice, _cpu_state(self.model)
        return dice

    def _save_weights(self, path, state, phase):
        model = build_model(self.config)
        model.load_state_dict(state)
        save_model(path, model, self.config, phase=phase, validation_dice=self.best_dice)

    # -- checkpoint and resume ------------------------------------------------------------
    def save(self, path) -> Path:
        """A resumable training checkpoint (atomic; loads safely with weights_only)."""
        numpy_state = self._batches.rng_state() if self._batches else self.rng.bit_generator.state
        return save_checkpoint(path, {
            "kind": "training", "config": self.config.to_dict(), "model": self._finite(_cpu_state(self.model)),
            "teacher": _cpu_state(self.teacher) if self.teacher is not None else None,
            "optimizer": self.optimizer.state_dict(), "phase": self.phase, "iteration": self.iteration,
            "elapsed": self.elapsed, "best_dice": self.best_dice, "best_state": self.best_state,
            "pretrained_state": self.pretrained_state, "initial_dice": self.initial_dice,
            "pretrained_dice": self.pretrained_dice,
            "rng": {"numpy": numpy_state, "cutmix": self.generator.get_state(),
                    "torch": torch.get_rng_state()},
        })

    @classmethod
    def resume(cls, path, labeled, unlabeled=(), validation=(), out_dir=None, device=None,
               overrides: Optional[dict] = None, preset_name: Optional[str] = None) -> "TrainingRun":
        """Continue a run from a training checkpoint written by :meth:`save`.

        ``overrides`` (the settings the user gave again) and ``preset_name`` go through
        :func:`~.config.resumed_config`: iteration counts, intervals and speed settings may change
        (``resume_changes`` lists them; more self-training iterations reopen a finished run), any
        other difference raises CVBMInputError.
        """
        payload = load_checkpoint(path)
        if payload.get("kind") != "training":
            raise CVBMInputError(f"{path} is a model checkpoint, not a training checkpoint to resume")
        model, saved = model_from_payload(payload, source=f"checkpoint {path}")
        config, changes = resumed_config(saved, overrides or {}, preset_name)
        _check_iterations(payload["phase"], payload["iteration"], saved, config)
        run = cls(config, labeled, unlabeled, validation, out_dir=out_dir, device=device)
        run.resume_changes = changes
        run.model.load_state_dict(model.state_dict())
        run.phase, run.iteration = payload["phase"], payload["iteration"]
        run.elapsed, run.best_dice = payload["elapsed"], payload["best_dice"]
        run.best_state, run.pretrained_state = payload["best_state"], payload["pretrained_state"]
        run.initial_dice, run.pretrained_dice = payload.get("initial_dice"), payload.get("pretrained_dice")
        if payload["teacher"] is not None:
            run.teacher = run._place(build_model(config)).eval()
            run.teacher.load_state_dict(payload["teacher"])
            for p in run.teacher.parameters():
                p.requires_grad_(False)
        run.optimizer.load_state_dict(payload["optimizer"])
        run.rng.bit_generator.state = payload["rng"]["numpy"] if distributed.rank() == 0 else \
            np.random.default_rng([config.seed, distributed.rank(), run.iteration]).bit_generator.state
        run.generator.set_state(payload["rng"]["cutmix"])
        torch.set_rng_state(payload["rng"]["torch"])
        if run.phase == "done" and run.iteration < config.selftrain_iterations:  # extended: train on
            run.phase = "selftrain"
            if run.best_dice < 0:  # no validation: the last weights, not those of the first finish
                run.best_state = None
        return run


def _check_iterations(phase: str, done: int, saved: TrainConfig, config: TrainConfig) -> None:
    """A resumed run may train longer or shorter, but not change a finished phase nor undo steps."""
    if phase != "pretrain" and config.pretrain_iterations != saved.pretrain_iterations:
        raise CVBMInputError(f"pretrain_iterations cannot change from {saved.pretrain_iterations} to "
                             f"{config.pretrain_iterations}: pre-training has finished in this checkpoint")
    name = "pretrain_iterations" if phase == "pretrain" else "selftrain_iterations"
    if getattr(config, name) < done:
        raise CVBMInputError(f"{name} cannot be {getattr(config, name)}: this checkpoint has already done "
                             f"{done} of them")


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
