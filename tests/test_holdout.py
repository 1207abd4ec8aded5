"""Holding out part of the user's corrections (core/holdout.py)."""

import zlib
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from napari_cvbm.core.data import Case, annotated_slices
from napari_cvbm.core.holdout import TOO_FEW_IMAGES, TOO_FEW_SLICES, split_corrections
from napari_cvbm.core.look_alike import look_alike_groups


def volume_case(name, slices=None, shape=(40, 8, 8)):
    """A labeled volume (noise of its own, by ``name``) annotated on ``slices`` (all when None)."""
    image = np.random.default_rng(zlib.crc32(name.encode())).normal(size=shape).astype(np.float32)
    label = np.zeros(shape, np.int64)
    label[:, 2:6, 2:6] = 1
    annotated = None
    if slices is not None:
        annotated = np.zeros(shape, bool)
        annotated[list(slices)] = True
    return Case(name, image, label, annotated)


def image_case(name):
    return Case(name, np.ones((8, 8), np.float32), np.eye(8, dtype=np.int64))


@pytest.mark.parametrize("count, held", [(3, 1), (4, 1), (6, 2), (8, 2), (10, 3)])
def test_three_or_more_cases_hold_out_whole_cases(count, held):
    cases = [volume_case(f"c{i}", [1, 2]) if i % 2 else image_case(f"c{i}") for i in range(count)]
    train, held_out = split = split_corrections(cases)
    assert len(held_out) == held and len(train) == count - held
    assert sorted(c.name for c in train + held_out) == sorted(c.name for c in cases)
    assert all(any(c is h for c in cases) for h in held_out)  # the cases themselves, masks untouched
    assert split.reason == "" and split.summary() == "; ".join(f"image '{c.name}'" for c in held_out)


def test_slices_are_held_out_evenly_spread_and_leave_the_training_case():
    corrected = list(range(4, 36, 2))  # 16 corrected slices
    case = volume_case("a", corrected)
    split = split_corrections([case])
    (train,), (held,) = split
    out = annotated_slices(held).tolist()
    assert len(out) == 4 and set(out) < set(corrected)
    assert out[0] not in (corrected[0], corrected[-1]) and out[-1] not in (corrected[0], corrected[-1])
    gaps = np.diff([corrected.index(s) for s in out])
    assert gaps.min() >= 3 and gaps.max() <= 5  # one in each quarter, not bunched together
    assert annotated_slices(train).tolist() == sorted(set(corrected) - set(out))
    assert not (train.annotated & held.annotated).any()
    np.testing.assert_array_equal(train.annotated | held.annotated, case.annotated)
    assert held.image is case.image and held.label is case.label  # same image, only the mask differs
    assert split.summary() == f"slices {', '.join(map(str, out))} of 'a'"


def test_fully_annotated_volume_gives_slices_too():
    (train, small), (held,) = split_corrections([volume_case("full"), volume_case("two", [5, 6])])
    assert len(annotated_slices(held)) == 10  # a quarter of its 40 slices
    assert annotated_slices(train).tolist() == sorted(set(range(40)) - set(annotated_slices(held)))
    assert small.annotated is not None and annotated_slices(small).tolist() == [5, 6]  # too few: kept whole


def test_four_slices_hold_out_one_that_is_neither_end():
    for seed in range(20):
        (_,), (held,) = split_corrections([volume_case("a", [3, 9, 10, 30])], seed=seed)
        assert annotated_slices(held).tolist() in ([9], [10])


def test_never_everything():
    for count in range(3, 9):
        train, held = split_corrections([image_case(str(i)) for i in range(count)])
        assert train and held
    for slices in (range(4), range(5), range(6), range(40)):
        (train,), (held,) = split_corrections([volume_case("a", slices)])
        assert train.annotated.any() and held.annotated.any()


def test_same_seed_same_split():
    cases = [volume_case(str(i), range(i, 20)) for i in range(7)]
    first, second = split_corrections(cases, seed=3), split_corrections(cases, seed=3)
    assert [c.name for c in first.held_out] == [c.name for c in second.held_out]
    assert {tuple(c.name for c in split_corrections(cases, seed=s).held_out) for s in range(10)} != \
        {tuple(c.name for c in first.held_out)}  # the seed picks which
    one = [volume_case("a", range(0, 40, 2))]
    slices = [annotated_slices(split_corrections(one, seed=5).held_out[0]).tolist() for _ in range(2)]
    assert slices[0] == slices[1]


@pytest.mark.parametrize("cases, reason", [
    ([volume_case("a", [20, 21, 30])], TOO_FEW_SLICES),
    ([volume_case("a", [1, 2, 3]), volume_case("b", [7])], TOO_FEW_SLICES),
    ([image_case("a"), image_case("b")], TOO_FEW_IMAGES),
    ([], TOO_FEW_IMAGES),
])
def test_too_little_holds_out_nothing_and_says_why(cases, reason):
    split = split_corrections(cases)
    train, held = split
    assert held == [] and train == cases and all(t is c for t, c in zip(train, cases))
    assert split.reason == reason and split.summary() == ""
    assert "at least 4 slices" in TOO_FEW_SLICES


def scan(seed, shape=(16, 32, 32)):
    """A smooth random volume: the anatomy of one scan."""
    noise = np.random.default_rng(seed).normal(size=shape)
    return ndimage.gaussian_filter(noise, 2).astype(np.float32)


def frames(name, seed, slices, count=2):
    """``count`` frames of one scan (its anatomy, moved a little, plus noise of their own), each
    annotated on ``slices``."""
    anatomy = scan(seed)
    out = []
    for frame in range(count):
        image = np.roll(anatomy, frame, axis=2) + 0.02 * np.random.default_rng(100 + frame).normal(size=anatomy.shape)
        label = (image > 0).astype(np.int64)
        annotated = np.zeros(anatomy.shape, bool)
        annotated[list(slices)] = True
        out.append(Case(f"{name}_frame{frame + 1}", image.astype(np.float32), label, annotated, (1.0, 1.0, 1.0)))
    return out


def test_frames_of_one_scan_look_alike_and_other_scans_do_not():
    one, other = frames("p1", 1, [3]), frames("p2", 2, [3])
    assert look_alike_groups(one + other) == [[0, 1], [2, 3]]
    moved = [one[0], replace(other[0], spacing=(2.0, 1.0, 1.0))]  # another spacing: another scan
    assert look_alike_groups(moved + [replace(one[1], image=one[1].image[:, :, :30])]) == [[0], [1], [2]]
    flat = Case("photo", np.ones((8, 8), np.float32))
    assert look_alike_groups([flat, replace(flat, name="copy")]) == [[0], [1]]  # 2D: never grouped


def test_look_alike_volumes_are_held_out_together():
    cases = frames("p1", 1, [3, 7]) + frames("p2", 2, [3, 7]) + frames("p3", 3, [5, 9])
    for seed in range(6):
        split = split_corrections(cases, seed=seed)
        assert len(split.held_out) == 2 and len(split.train) == 4
        (scan_name,) = {c.name.split("_")[0] for c in split.held_out}  # both frames of one scan
        assert scan_name not in {c.name.split("_")[0] for c in split.train}
        assert split.summary() == f"images '{scan_name}_frame1', '{scan_name}_frame2' (look alike)"


def test_frames_of_one_scan_are_held_out_on_the_same_slices():
    corrected = [2, 4, 6, 8, 10, 12, 14, 15]
    split = split_corrections(frames("p1", 1, corrected), seed=0)
    out = {tuple(annotated_slices(c)) for c in split.held_out}
    assert len(split.held_out) == 2 and len(out) == 1  # the same slices in both frames
    (slices,) = out
    assert len(slices) == 2 and all(not (set(slices) & set(annotated_slices(c))) for c in split.train)
    assert split.summary() == f"slices {', '.join(map(str, slices))} of 'p1_frame1', 'p1_frame2' (look alike)"


def test_two_frames_corrected_on_few_slices_hold_nothing_out_and_say_why():
    """Four images, but two scans of two corrected slices: the old rule held out a whole image, the
    twin of one trained on."""
    cases = frames("p1", 1, [3, 7]) + frames("p2", 2, [2, 8])
    split = split_corrections(cases)
    assert split.held_out == [] and split.train == cases
    assert split.reason == (f"{TOO_FEW_SLICES}; 'p1_frame1', 'p1_frame2' (look alike) count as one image; "
                            "'p2_frame1', 'p2_frame2' (look alike) count as one image")


def test_a_fine_tune_got_worse_only_when_the_shown_dice_fell():
    from napari_cvbm.core.holdout import got_worse

    assert got_worse(0.50, 0.494) and not got_worse(0.50, 0.496)  # 0.49 < 0.50; 0.50 == 0.50
    assert not got_worse(0.50, 0.70) and not got_worse(None, 0.1) and not got_worse(0.5, None)
