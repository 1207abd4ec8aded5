"""Spec equations checked on small tensors against values computed by hand (spec 2-5)."""

import math

import pytest
import torch

from napari_cvbm.core.cutmix import cutmix, cutmix_mask, cutmix_pair
from napari_cvbm.core.ema import ema_update
from napari_cvbm.core.labels import background_labels, one_hot
from napari_cvbm.core.losses import (
    bidirectional_consistency,
    complementary_seg_loss,
    consistency_weight,
    consistency_weight_paper,
    consistency_weight_release,
    region_wide_loss,
    soft_dice_loss,
    softmax_seg_loss,
)
from napari_cvbm.core.networks import CVBMOutput
from napari_cvbm.core.pseudo_labels import class_map, pseudo_labels


# --- spec 2: complementary labels -------------------------------------------------------
def test_background_labels_binary_is_one_minus_y():
    y = torch.tensor([[0, 1, 1, 0]])
    bg = background_labels(y, 2)
    assert bg.shape == (1, 2, 4)
    assert torch.equal(bg[0, 1], torch.tensor([1.0, 0.0, 0.0, 1.0]))  # Y_bg = 1 - Y
    assert torch.equal(bg[0, 0], y[0].float())


def test_background_labels_multiclass_inverts_every_channel():
    y = torch.tensor([[0, 1, 2, 3]])
    bg = background_labels(y, 4)
    expected = torch.tensor([[0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]], dtype=torch.float32)
    assert torch.equal(bg[0], expected.T)  # channel c is 0 exactly where y == c, values only 0/1
    assert set(bg.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(bg.sum(1), torch.full((1, 4), 3.0))


# --- spec 3: cut-mix ----------------------------------------------------------------------
def test_cutmix_mask_box_size_and_values():
    g = torch.Generator().manual_seed(0)
    m = cutmix_mask((9, 12, 6), beta=2 / 3, generator=g)
    assert m.shape == (9, 12, 6)
    assert int((m == 0).sum()) == 6 * 8 * 4  # a cuboid of 2/3 of each side
    zeros = torch.nonzero(m == 0)
    extent = zeros.max(0).values - zeros.min(0).values + 1
    assert extent.tolist() == [6, 8, 4]


def test_cutmix_mask_position_varies_and_is_seeded():
    masks = [cutmix_mask((30, 30), generator=torch.Generator().manual_seed(s)) for s in range(5)]
    assert len({m.numpy().tobytes() for m in masks}) > 1
    again = cutmix_mask((30, 30), generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, masks[3])


def test_cutmix_pair_is_complementary_for_images_and_labels():
    m = cutmix_mask((8, 8), generator=torch.Generator().manual_seed(1))
    a, b = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    x_a, x_b = cutmix_pair(a, b, m)
    assert torch.allclose(x_a, a * m + b * (1 - m))
    assert torch.allclose(x_b, a * (1 - m) + b * m)
    assert torch.allclose(x_a + x_b, a + b)
    la, lb = torch.zeros(2, 8, 8, dtype=torch.long), torch.full((2, 8, 8), 3)
    mixed = cutmix(la, lb, m)
    assert mixed.dtype == torch.long
    assert torch.equal(mixed == 0, m.bool().expand(2, 8, 8))


# --- spec 4: losses -----------------------------------------------------------------------
def test_soft_dice_by_hand():
    p = torch.tensor([[[0.8, 0.3], [0.2, 0.7]]])  # (N=1, C=2, S=2)
    t = one_hot(torch.tensor([[0, 1]]), 2)
    full = soft_dice_loss(p, t, torch.ones(1, 2))
    assert full.item() == pytest.approx(1 - (1.6 / 2.1 + 1.4 / 1.9) / 2, abs=1e-4)
    # only the first voxel counts: channel 0 = 1.6/1.8, channel 1 has no overlap
    masked = soft_dice_loss(p, t, torch.tensor([[1.0, 0.0]]))
    assert masked.item() == pytest.approx(1 - (1.6 / 1.8 + 0.0) / 2, abs=1e-4)


def test_softmax_seg_loss_is_mean_of_masked_ce_and_dice():
    logits = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])  # voxel 0: P=(0.75, 0.25); voxel 1: (0.5, 0.5)
    y = torch.tensor([[0, 1]])
    region = torch.tensor([[1.0, 1.0]])
    ce = (-math.log(0.75) - math.log(0.5)) / 2
    # channel 0: P=(.75,.5), T=(1,0): 2*.75/(1.25+1); channel 1: P=(.25,.5), T=(0,1): 2*.5/(.75+1)
    dice = 1 - ((1.5 / 2.25) + (1.0 / 1.75)) / 2
    assert softmax_seg_loss(logits, y, region).item() == pytest.approx(0.5 * (ce + dice), abs=1e-4)
    # a region covering only voxel 0 ignores voxel 1 entirely
    only0 = softmax_seg_loss(logits, torch.tensor([[0, 0]]), torch.tensor([[1.0, 0.0]]))
    changed = softmax_seg_loss(logits, torch.tensor([[0, 1]]), torch.tensor([[1.0, 0.0]]))
    assert only0.item() == pytest.approx(changed.item())


def test_complementary_loss_uses_inverted_labels():
    logits = torch.zeros(1, 2, 2)  # sigmoid = 0.5 everywhere
    y = torch.tensor([[0, 1]])  # bg targets: channel 0 = (0, 1), channel 1 = (1, 0)
    expected = 0.5 * (math.log(2.0) + (1 - 0.5))  # BCE = log 2; Dice per channel 2*.5/(1+1) = .5
    assert complementary_seg_loss(logits, y, torch.ones(1, 2)).item() == pytest.approx(expected, abs=1e-4)
    # a bg head that is sure "not class y" everywhere has a small loss; the reverse a large one
    good = torch.tensor([[[-9.0, 9.0], [9.0, -9.0]]])
    assert complementary_seg_loss(good, y, torch.ones(1, 2)).item() < 0.01
    assert complementary_seg_loss(-good, y, torch.ones(1, 2)).item() > 4


def test_complementary_dice_sees_a_missed_small_structure():
    """One voxel of class 1 among 100: a bg head that says "not class 1" everywhere misses it.

    Its Dice term is on 1 - Q_bg vs 1 - Y_bg, so channel 1 scores 0 overlap (Dice loss 1/2 over the
    two channels); a Dice on Q_bg vs Y_bg (99 ones) would be about 0.005 and hide the miss."""
    y = torch.zeros(1, 100, dtype=torch.long)
    y[0, 0] = 1
    missed = torch.stack([torch.full((100,), -9.0), torch.full((100,), 9.0)])[None]  # Q_bg[1] = 1 everywhere
    missed[0, 0, 0] = 9.0  # and the structure's voxel is "not background" (channel 0 right there)
    dice_part = 2 * complementary_seg_loss(missed, y, torch.ones(1, 100)).item() - \
        torch.nn.functional.binary_cross_entropy_with_logits(missed, background_labels(y, 2)).item()
    assert dice_part > 0.45


def test_region_wide_loss_weights_and_regions():
    torch.manual_seed(0)
    out = CVBMOutput(torch.randn(1, 2, 4), torch.randn(1, 2, 4), torch.randn(1, 2, 4))
    fg_t = torch.tensor([[0, 1, 1, 0]])
    bg_t = torch.tensor([[0, 1, 0, 0]])
    lab = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    terms = region_wide_loss(out, fg_t, bg_t, lab, 1 - lab, alpha=0.5)
    assert terms["fg_l"].item() == pytest.approx(softmax_seg_loss(out.fg, fg_t, lab).item())
    assert terms["bg_u"].item() == pytest.approx(complementary_seg_loss(out.bg, bg_t, 1 - lab).item())
    total = terms["fg_l"] + terms["bg_l"] + 0.5 * (terms["fg_u"] + terms["bg_u"])
    assert terms["rw"].item() == pytest.approx(total.item())
    # changing the targets in the unlabeled region leaves the labeled terms untouched
    moved = region_wide_loss(out, torch.tensor([[0, 1, 0, 1]]), bg_t, lab, 1 - lab)
    assert moved["fg_l"].item() == pytest.approx(terms["fg_l"].item())
    assert moved["fg_u"].item() != pytest.approx(terms["fg_u"].item())
    # foreground-only arm: no bg head, no bg terms
    fg_only = region_wide_loss(CVBMOutput(out.fg, None, None), fg_t, bg_t, lab, 1 - lab)
    assert "bg_l" not in fg_only and fg_only["rw"].item() == pytest.approx(
        (terms["fg_l"] + 0.5 * terms["fg_u"]).item())


def test_bidirectional_consistency_by_hand():
    fg = torch.zeros(1, 2, 3)  # P_fg = (0.5, 0.5)
    mix = torch.tensor([[[math.log(3.0)] * 3, [0.0] * 3]])  # P_M = (0.75, 0.25)
    bg = torch.zeros(1, 2, 3)  # 1 - Q_bg = 0.5: agrees with P_fg
    terms = bidirectional_consistency(CVBMOutput(fg, bg, mix))
    assert terms["bcl_direct"].item() == pytest.approx(0.0625, abs=1e-6)
    assert terms["bcl_inverse"].item() == pytest.approx(0.0, abs=1e-7)
    bg2 = torch.tensor([[[math.log(3.0)] * 3, [-math.log(3.0)] * 3]])  # 1 - Q = (0.25, 0.75)
    terms2 = bidirectional_consistency(CVBMOutput(fg, bg2, mix))
    assert terms2["bcl_inverse"].item() == pytest.approx(0.0625, abs=1e-6)
    assert terms2["bcl"].item() == pytest.approx(0.125, abs=1e-6)


def test_consistency_ramps():
    assert consistency_weight_paper(0, 100) == pytest.approx(0.1 * math.exp(-5))
    assert consistency_weight_paper(50, 100) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert consistency_weight_paper(100, 100) == pytest.approx(0.1)
    assert consistency_weight_paper(500, 100) == pytest.approx(0.1)
    # release: the same curve in steps of 150 iterations, full weight after `rampup`
    assert consistency_weight_release(149, 1.0, 6000) == pytest.approx(math.exp(-5))
    assert consistency_weight_release(150, 1.0, 6000) == pytest.approx(math.exp(-5 * (1 - 150 / 6000) ** 2))
    assert consistency_weight_release(6000, 0.5, 6000) == pytest.approx(0.5)
    assert consistency_weight_release(20000, 0.5, 30000) < 0.5
    assert consistency_weight_release(149, 0.5, 30000) == pytest.approx(0.5 * math.exp(-5))  # 2D: 150 too
    # a shorter ramp keeps the 3D ramp's 40 steps: a 140-iteration fine-tune ramps up within its run
    short = [consistency_weight_release(t, 1.0, 140) / consistency_weight_paper(t, 140, 1.0) for t in range(140)]
    assert min(short) > 0.8 and consistency_weight_release(139, 1.0, 140) > 0.9
    assert consistency_weight_release(2, 1.0, 140) == consistency_weight_release(0, 1.0, 140) < \
        consistency_weight_release(3, 1.0, 140)  # steps of 140 // 40 = 3 iterations
    assert consistency_weight(10, 100, "paper", 0.1) == consistency_weight_paper(10, 100, 0.1)
    with pytest.raises(ValueError):
        consistency_weight(10, 100, "linear", 0.1)


# --- spec 5: EMA teacher and pseudo-labels ------------------------------------------------
def test_ema_update_by_hand():
    teacher, student = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(0.0)
        student.running_mean.fill_(3.0)
    ema_update(teacher, student, decay=0.99)
    assert torch.allclose(teacher.weight, torch.full((2,), 0.99))
    ema_update(teacher, student, decay=0.99)
    assert torch.allclose(teacher.weight, torch.full((2,), 0.99 * 0.99))
    assert torch.equal(teacher.running_mean, student.running_mean)  # buffers are copied


def test_class_map_is_argmax_over_classes_ties_included():
    logits = torch.randint(0, 3, (4, 5, 6, 7, 8)).float()  # small integers: many ties
    assert torch.equal(class_map(logits), logits.argmax(1))  # first index on ties, like argmax


def test_pseudo_labels_keep_largest_component_per_class():
    fg = torch.zeros(1, 3, 1, 10)  # (N, C, 1, 10): argmax along C
    classes = torch.tensor([1, 1, 1, 0, 1, 0, 2, 0, 2, 2])
    fg[0, :, 0] = torch.nn.functional.one_hot(classes, 3).T.float() * 5
    bg = -fg.clone()  # bg head says "not class c" where fg is not c: same labels
    bg[0, :, 0, 0] = torch.tensor([-5.0, 5.0, 5.0])  # bg view says class 0 at voxel 0
    fg_pl, bg_pl = pseudo_labels(CVBMOutput(fg, bg, None))
    assert fg_pl[0, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 2, 2]
    assert bg_pl[0, 0].tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 2, 2]
    raw_fg, _ = pseudo_labels(CVBMOutput(fg, bg, None), clean=False)
    assert raw_fg[0, 0].tolist() == classes.tolist()


def test_pseudo_labels_outside_the_field_of_view_never_win_the_cleaning():
    """A teacher's larger component outside a fundus disc must not erase the vessel inside it."""
    fg = torch.zeros(1, 2, 1, 10)
    classes = torch.tensor([1, 1, 0, 0, 0, 0, 1, 1, 1, 1])  # inside: voxels 0-1; outside: 6-9, larger
    fg[0, :, 0] = torch.nn.functional.one_hot(classes, 2).T.float() * 5
    valid = torch.tensor([[[1, 1, 1, 1, 1, 0, 0, 0, 0, 0]]], dtype=torch.float32)
    unmasked, _ = pseudo_labels(CVBMOutput(fg, -fg, None))
    assert unmasked[0, 0].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]  # the vessel inside lost
    fg_pl, bg_pl = pseudo_labels(CVBMOutput(fg, -fg, None), valid=valid)
    assert fg_pl[0, 0].tolist() == bg_pl[0, 0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
