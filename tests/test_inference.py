"""Tests for napari_cvbm.core.inference (spec 7): sliding window, slice-wise 2D, views, options."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_cvbm.core import device
from napari_cvbm.core.device import available_devices, choose_device
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.inference import Prediction, predict
from napari_cvbm.core.intensity import normalize_intensity
from napari_cvbm.core.networks import CVBMNet
from napari_cvbm.core.views import (
    OUTPUT_MODES,
    bg_view,
    combine_views,
    confidence_map,
    disagreement_map,
    fg_view,
    mix_view,
    view_probabilities,
)


@pytest.fixture(autouse=True)
def float32_inference(monkeypatch):
    """These tests check the sliding-window arithmetic against exact references, so they run as on a
    CPU without bfloat16 (float32); mixed-precision inference: test_acceleration.py."""
    monkeypatch.setattr(device, "cpu_has_native_bfloat16", lambda: False)


# ------------------------------------------------------------------------------------------
# stand-in models with known outputs
# ------------------------------------------------------------------------------------------
class PointwiseModel(nn.Module):
    """Logits are affine functions of each voxel's intensity, so every window agrees exactly.

    fg[c] = a[c] * x + b[c]; bg[c] = d[c] * x + e[c]; mix = W @ concat(fg, bg) + m.
    Records the shapes it was called with and how often each branch ran.
    """

    size_divisor = 16

    def __init__(self, dim=3, num_classes=2, background_branch=True, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dim, self.num_classes, self.background_branch = dim, num_classes, background_branch
        c = num_classes
        self.a = nn.Parameter(torch.linspace(-2.0, 2.0, c))
        self.b = nn.Parameter(torch.linspace(0.5, -0.5, c))
        self.d = nn.Parameter(torch.linspace(1.5, -1.5, c))
        self.e = nn.Parameter(torch.linspace(-0.3, 0.3, c))
        self.w = nn.Parameter(torch.randn(c, 2 * c, generator=g))
        self.m = nn.Parameter(torch.randn(c, generator=g) * 0.1)
        self.calls = {"forward": 0, "forward_fg": 0, "bg": 0}
        self.shapes = []

    def _bc(self, p):  # (C,) -> broadcastable (1, C, 1, ...)
        return p.view(1, -1, *([1] * self.dim))

    def _check(self, x):
        assert x.ndim == self.dim + 2 and x.shape[1] == 1, x.shape
        assert all(s % self.size_divisor == 0 for s in x.shape[2:]), x.shape
        self.shapes.append(tuple(x.shape))

    def _fg(self, x):
        return self._bc(self.a) * x + self._bc(self.b)

    def _bg(self, x):
        self.calls["bg"] += 1
        return self._bc(self.d) * x + self._bc(self.e)

    def forward(self, x):
        self._check(x)
        self.calls["forward"] += 1
        fg = self._fg(x)
        if not self.background_branch:
            return fg, None, None
        bg = self._bg(x)
        mix = torch.einsum("kc,nc...->nk...", self.w, torch.cat([fg, bg], 1)) + self._bc(self.m)
        return fg, bg, mix

    def forward_fg(self, x):
        self._check(x)
        self.calls["forward_fg"] += 1
        return self._fg(x)


class ConvModel(PointwiseModel):
    """Adds a fixed 3x3(x3) smoothing conv to the logits: windows see different borders."""

    def __init__(self, dim=3, num_classes=2):
        super().__init__(dim, num_classes)
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        self.conv = conv(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 3 ** dim)

    def forward(self, x):
        return super().forward(self.conv(x))

    def forward_fg(self, x):
        return super().forward_fg(self.conv(x))


def expected_views(model, norm_image):
    """fg, bg, mix probabilities of a whole-image forward (no windows), class axis first."""
    fg, bg, mix = _raw(model, torch.from_numpy(norm_image)[None, None])
    return fg_view(fg)[0].numpy(), bg_view(bg)[0].numpy(), mix_view(mix)[0].numpy()


def _raw(model, x):
    """Forward without the multiple-of-16 check (for whole, odd-sized images)."""
    with torch.no_grad():
        if isinstance(model, ConvModel):
            x = model.conv(x)
        fg = model._fg(x)
        bg = model._bg(x)
        mix = torch.einsum("kc,nc...->nk...", model.w, torch.cat([fg, bg], 1)) + model._bc(model.m)
    return fg, bg, mix


def rng_image(shape, seed=0):
    return np.random.default_rng(seed).normal(100.0, 20.0, size=shape).astype(np.float32)


# ------------------------------------------------------------------------------------------
# device
# ------------------------------------------------------------------------------------------
def test_choose_device():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device(" CPU ") == torch.device("cpu")
    auto = choose_device()
    assert auto.type in ("cuda", "mps", "cpu")
    if torch.cuda.is_available():
        assert auto.type == "cuda"
        assert choose_device("cuda").type == "cuda"
    else:
        with pytest.raises(CVBMInputError, match="CUDA"):
            choose_device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        with pytest.raises(CVBMInputError, match="MPS"):
            choose_device("mps")
    with pytest.raises(CVBMInputError, match="unknown device"):
        choose_device("tpu")


def test_available_devices_are_the_ones_choose_device_accepts():
    choices = available_devices()
    assert choices[:2] == ["auto", "cpu"]
    assert ("cuda" in choices) == torch.cuda.is_available()
    for choice in choices:
        choose_device(choice)


# ------------------------------------------------------------------------------------------
# formulas by hand
# ------------------------------------------------------------------------------------------
def test_view_formulas_by_hand():
    # one voxel, two classes; shapes (N=1, C=2, 1)
    fg_logits = torch.tensor([[[0.0], [np.log(3.0)]]])
    assert np.allclose(fg_view(fg_logits)[0, :, 0].numpy(), [0.25, 0.75])
    # bg: sigmoid = Q = P(not class c). logits 0 -> Q = 0.5 ; ln(3) -> Q = 0.75
    bg_logits = torch.tensor([[[0.0], [np.log(3.0)]]])
    # 1 - Q = [0.5, 0.25] -> normalised [2/3, 1/3]
    assert np.allclose(bg_view(bg_logits)[0, :, 0].numpy(), [2 / 3, 1 / 3], atol=1e-5)
    # consistent bg head (Q0 + Q1 = 1): normalisation changes nothing
    q = torch.tensor([0.2, 0.8])
    consistent = torch.log(q / (1 - q)).view(1, 2, 1)
    assert np.allclose(bg_view(consistent)[0, :, 0].numpy(), [0.8, 0.2], atol=1e-5)
    # all channels "not class c" with certainty -> near uniform, no NaN
    assert np.allclose(bg_view(torch.full((1, 3, 1), 50.0))[0, :, 0].numpy(), 1 / 3, atol=1e-4)
    assert np.allclose(mix_view(fg_logits)[0, :, 0].numpy(), [0.25, 0.75])

    fg = np.array([[0.25], [0.75]], np.float32)
    bg = np.array([[2 / 3], [1 / 3]], np.float32)
    mix = np.array([[0.9], [0.1]], np.float32)
    assert combine_views("fg", fg, bg, mix) is fg
    assert combine_views("mix", fg, bg, mix) is mix
    assert np.allclose(combine_views("avg", fg, bg, mix), [[(0.25 + 2 / 3) / 2], [(0.75 + 1 / 3) / 2]])
    assert np.allclose(confidence_map(fg), [0.75])
    assert np.allclose(confidence_map(bg), [2 / 3])
    # binary: TV distance == |fg[1] - bg[1]|
    assert np.allclose(disagreement_map(fg, bg), [abs(0.75 - 1 / 3)])
    # three classes: 0.5 * (|.2-.5| + |.3-.1| + |.5-.4|) = 0.3
    fg3 = np.array([[0.2], [0.3], [0.5]], np.float32)
    bg3 = np.array([[0.5], [0.1], [0.4]], np.float32)
    assert np.allclose(disagreement_map(fg3, bg3), [0.3])
    assert np.allclose(disagreement_map(fg3, fg3), [0.0])
    with pytest.raises(CVBMInputError):
        combine_views("avg", fg, None, None)
    with pytest.raises(CVBMInputError):
        combine_views("mix", fg, bg, None)
    assert view_probabilities("bg", fg, bg, mix) is bg
    assert view_probabilities("mix", fg, bg, mix) is mix
    with pytest.raises(CVBMInputError):
        view_probabilities("bg", fg, None, None)


# ------------------------------------------------------------------------------------------
# 3D sliding window
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_sliding_window_pointwise_exact(blend):
    shape = (37, 45, 29)  # not a multiple of the window
    img = rng_image(shape)
    model = PointwiseModel(dim=3)
    pred = predict(model, img, patch_size=(16, 32, 16), overlap=0.5, device="cpu", blend=blend, heads="all")
    fg, bg, mix = expected_views(model, normalize_intensity(img))
    assert isinstance(pred, Prediction)
    for arr in (pred.fg, pred.bg, pred.mix):
        assert arr.shape == (2, *shape) and arr.dtype == np.float32
    assert np.allclose(pred.fg, fg, atol=1e-5)
    assert np.allclose(pred.bg, bg, atol=1e-5)
    assert np.allclose(pred.mix, mix, atol=1e-5)
    assert pred.labels.shape == shape and np.issubdtype(pred.labels.dtype, np.integer)
    assert np.array_equal(pred.labels, fg.argmax(0))
    assert pred.fg_confidence.shape == shape and pred.fg_confidence.dtype == np.float32
    assert np.allclose(pred.fg_confidence, fg.max(0), atol=1e-5)
    assert np.allclose(pred.bg_confidence, bg.max(0), atol=1e-5)
    assert np.allclose(pred.disagreement, np.abs(fg[1] - bg[1]), atol=1e-5)
    assert set(model.shapes) <= {(b, 1, 16, 32, 16) for b in range(1, 5)}


def test_sliding_window_conv_model_close_to_whole_forward():
    shape = (40, 37, 35)
    img = rng_image(shape, seed=1)
    model = ConvModel(dim=3)
    pred = predict(model, img, patch_size=(32, 32, 32), overlap=0.5, device="cpu", heads="all")
    fg, bg, mix = expected_views(model, normalize_intensity(img))
    # windows zero-pad at their own borders; blending keeps the error small and rare
    err = np.abs(pred.fg - fg)
    assert err.mean() < 1e-2
    assert err.max() < 0.3
    # Gaussian importance weights down-weight window borders: less error than plain averaging
    const = predict(model, img, patch_size=(32, 32, 32), overlap=0.5, device="cpu", blend="constant")
    assert err.mean() < np.abs(const.fg - fg).mean()
    # voxels far from every window border are exact: windows at z 0..32 and 8..40 overlap in 8..32
    inner = (slice(None), slice(9, 31), slice(6, 31), slice(4, 31))
    assert np.allclose(pred.fg[inner], fg[inner], atol=1e-5)
    assert np.allclose(pred.mix[inner], mix[inner], atol=1e-5)


def test_small_volume_is_padded_and_cropped_back():
    shape = (10, 20, 7)
    img = rng_image(shape, seed=2)
    model = PointwiseModel(dim=3)
    pred = predict(model, img, patch_size=(16, 32, 16), device="cpu")
    fg, bg, _ = expected_views(model, normalize_intensity(img))
    assert pred.fg.shape == (2, *shape) and pred.labels.shape == shape
    assert np.allclose(pred.fg, fg, atol=1e-5)
    assert np.allclose(pred.bg, bg, atol=1e-5)
    assert model.shapes == [(1, 1, 16, 32, 16)]


def test_overlap_per_axis_and_la_style_stride():
    img = rng_image((20, 40, 40), seed=3)
    model = PointwiseModel(dim=3)
    pred = predict(model, img, patch_size=(16, 32, 32), overlap=(0.75, 0.5, 0.875), device="cpu",
                   heads="fg", batch_size=8)
    fg, _, _ = expected_views(model, normalize_intensity(img))
    assert np.allclose(pred.fg, fg, atol=1e-5)
    with pytest.raises(CVBMInputError, match="overlap"):
        predict(model, img, patch_size=16, overlap=1.0, device="cpu")


# ------------------------------------------------------------------------------------------
# heads and modes
# ------------------------------------------------------------------------------------------
def test_heads_fg_never_calls_bg_branch():
    img = rng_image((20, 20, 20), seed=4)
    model = PointwiseModel(dim=3)
    pred = predict(model, img, heads="fg", patch_size=16, device="cpu")
    assert model.calls["bg"] == 0 and model.calls["forward"] == 0 and model.calls["forward_fg"] > 0
    assert pred.bg is None and pred.mix is None
    assert pred.bg_confidence is None and pred.disagreement is None
    assert pred.fg_confidence is not None
    for mode in ("mix", "avg"):
        with pytest.raises(CVBMInputError, match="heads='all'"):
            predict(model, img, heads="fg", mode=mode, patch_size=16, device="cpu")
    with pytest.raises(CVBMInputError):
        predict(model, img, heads="bg", patch_size=16, device="cpu")
    with pytest.raises(CVBMInputError):
        predict(model, img, mode="cvbm++", patch_size=16, device="cpu")


def test_heads_all_same_fg_as_heads_fg():
    img = rng_image((20, 24, 20), seed=5)
    model = PointwiseModel(dim=3)
    a = predict(model, img, heads="fg", patch_size=16, device="cpu")
    b = predict(model, img, heads="all", patch_size=16, device="cpu")
    assert np.allclose(a.fg, b.fg, atol=1e-6)
    assert np.array_equal(a.labels, b.labels)


def test_model_without_background_branch():
    img = rng_image((16, 16, 16), seed=6)
    model = PointwiseModel(dim=3, background_branch=False)
    pred = predict(model, img, heads="all", patch_size=16, device="cpu")
    assert pred.bg is None and pred.mix is None and pred.disagreement is None
    with pytest.raises(CVBMInputError, match="background branch"):
        predict(model, img, mode="avg", patch_size=16, device="cpu")


@pytest.mark.parametrize("mode", OUTPUT_MODES)
def test_modes_give_argmax_of_their_probabilities(mode):
    img = rng_image((16, 32, 16), seed=7)
    model = PointwiseModel(dim=3, num_classes=3)
    pred = predict(model, img, mode=mode, patch_size=(16, 32, 16), device="cpu")
    fg, bg, mix = expected_views(model, normalize_intensity(img))
    probs = {"fg": fg, "mix": mix, "avg": 0.5 * (fg + bg)}[mode]
    assert pred.mode == mode
    assert np.allclose(pred.probabilities, probs, atol=1e-5)
    assert np.array_equal(pred.labels, probs.argmax(0))
    assert np.allclose(pred.disagreement, 0.5 * np.abs(fg - bg).sum(0), atol=1e-5)
    for view in (pred.fg, pred.bg, pred.mix):
        assert np.allclose(view.sum(0), 1.0, atol=1e-5)
    assert 0 <= pred.disagreement.min() and pred.disagreement.max() <= 1


def test_modes_differ_on_a_model_whose_views_disagree():
    img = rng_image((16, 16, 16), seed=8)
    model = PointwiseModel(dim=3)
    labels = {m: predict(model, img, mode=m, patch_size=16, device="cpu").labels for m in OUTPUT_MODES}
    # fg says class 1 for bright voxels, the bg view says class 1 for dark ones
    assert not np.array_equal(labels["fg"], labels["avg"])
    assert not np.array_equal(labels["fg"], labels["mix"])


# ------------------------------------------------------------------------------------------
# 2D models
# ------------------------------------------------------------------------------------------
def test_2d_model_slice_wise_sliding_window():
    shape = (5, 40, 50)
    img = rng_image(shape, seed=9)
    model = PointwiseModel(dim=2)
    pred = predict(model, img, patch_size=(32, 32), overlap=0.25, device="cpu", batch_size=2)
    norm = normalize_intensity(img)
    x = torch.from_numpy(norm)[:, None]
    fg, bg, mix = _raw(model, x)
    assert pred.fg.shape == (2, *shape) and pred.labels.shape == shape
    assert np.allclose(pred.fg, fg_view(fg).numpy().transpose(1, 0, 2, 3), atol=1e-5)
    assert np.allclose(pred.bg, bg_view(bg).numpy().transpose(1, 0, 2, 3), atol=1e-5)
    assert np.allclose(pred.mix, mix_view(mix).numpy().transpose(1, 0, 2, 3), atol=1e-5)
    assert all(s[1:] == (1, 32, 32) and s[0] <= 2 for s in model.shapes)


def test_2d_model_slice_size_resizing():
    shape = (3, 40, 50)
    img = rng_image(shape, seed=10)
    model = PointwiseModel(dim=2)
    pred = predict(model, img, slice_size=(32, 64), device="cpu", batch_size=2)
    # by hand: z-score the volume, resize slices bilinearly, forward, resize probabilities back
    x = torch.from_numpy(normalize_intensity(img))[:, None]
    xr = F.interpolate(x, size=(32, 64), mode="bilinear", align_corners=False)
    fg, bg, _ = _raw(model, xr)
    back = lambda p: F.interpolate(p, size=(40, 50), mode="bilinear", align_corners=False)  # noqa: E731
    assert np.allclose(pred.fg, back(fg_view(fg)).numpy().transpose(1, 0, 2, 3), atol=1e-5)
    assert np.allclose(pred.bg, back(bg_view(bg)).numpy().transpose(1, 0, 2, 3), atol=1e-5)
    assert model.shapes == [(2, 1, 32, 64), (1, 1, 32, 64)]
    assert np.allclose(pred.fg.sum(0), 1.0, atol=1e-5)
    with pytest.raises(CVBMInputError, match="multiples of 16"):
        predict(model, img, slice_size=(30, 64), device="cpu")


def test_2d_model_on_2d_image():
    img = rng_image((40, 50), seed=11)
    model = PointwiseModel(dim=2)
    pred = predict(model, img, patch_size=32, device="cpu")
    fg, _, _ = _raw(model, torch.from_numpy(normalize_intensity(img))[None, None])
    assert pred.fg.shape == (2, 40, 50) and pred.labels.shape == (40, 50)
    assert pred.disagreement.shape == (40, 50)
    assert np.allclose(pred.fg, fg_view(fg)[0].numpy(), atol=1e-5)
    pred2 = predict(model, img, slice_size=(48, 48), device="cpu")
    assert pred2.fg.shape == (2, 40, 50)
    # slice already at slice_size: no resizing, a plain whole-slice forward
    img3 = rng_image((32, 64), seed=17)
    pred3 = predict(model, img3, slice_size=(32, 64), device="cpu")
    fg3, _, _ = _raw(model, torch.from_numpy(normalize_intensity(img3))[None, None])
    assert np.allclose(pred3.fg, fg_view(fg3)[0].numpy(), atol=1e-6)


def test_3d_model_on_2d_image_is_an_input_error():
    with pytest.raises(CVBMInputError, match="3D model"):
        predict(PointwiseModel(dim=3), rng_image((32, 32)), patch_size=16, device="cpu")
    with pytest.raises(CVBMInputError, match="slice_size"):
        predict(PointwiseModel(dim=3), rng_image((16, 16, 16)), slice_size=(16, 16), device="cpu")


# ------------------------------------------------------------------------------------------
# input errors, options
# ------------------------------------------------------------------------------------------
def test_nan_input_is_an_input_error():
    img = rng_image((16, 16, 16))
    img[3, 4, 5] = np.nan
    with pytest.raises(CVBMInputError, match="NaN"):
        predict(PointwiseModel(dim=3), img, patch_size=16, device="cpu")


def test_bad_settings_are_input_errors():
    model = PointwiseModel(dim=3)
    img = rng_image((16, 16, 16))
    with pytest.raises(CVBMInputError, match="multiples of 16"):
        predict(model, img, patch_size=(16, 20, 16), device="cpu")
    with pytest.raises(CVBMInputError, match="3 entries"):
        predict(model, img, patch_size=(16, 16), device="cpu")
    with pytest.raises(CVBMInputError, match="patch_size is required"):
        predict(model, img, device="cpu")
    with pytest.raises(CVBMInputError, match="batch_size"):
        predict(model, img, patch_size=16, batch_size=0, device="cpu")
    with pytest.raises(CVBMInputError):
        predict(model, rng_image((2, 16, 16, 16)), patch_size=16, device="cpu")


def test_largest_component_option():
    img = np.zeros((16, 32, 32), np.float32)
    img[2:6, 2:6, 2:6] = 10.0  # small bright blob
    img[8:14, 16:28, 16:28] = 10.0  # large bright blob
    model = PointwiseModel(dim=3)  # fg: class 1 where intensity is high
    raw = predict(model, img, patch_size=(16, 32, 32), device="cpu")
    assert raw.labels[3, 3, 3] == 1 and raw.labels[10, 20, 20] == 1
    clean = predict(model, img, patch_size=(16, 32, 32), device="cpu", largest_component=True)
    assert clean.labels[3, 3, 3] == 0 and clean.labels[10, 20, 20] == 1
    assert (clean.labels == 1).sum() == 6 * 12 * 12
    # probabilities are not altered by the post-processing
    assert np.allclose(clean.fg, raw.fg)


def test_progress_callback_and_training_mode_restored():
    img = rng_image((20, 40, 40), seed=12)
    model = PointwiseModel(dim=3)
    model.train()
    seen = []
    predict(model, img, patch_size=16, overlap=0.5, device="cpu", progress=seen.append, batch_size=3)
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert all(b >= a for a, b in zip(seen, seen[1:]))
    assert len(seen) > 3
    assert model.training


def test_out_of_memory_retries_with_smaller_batch_and_window():
    class Greedy(PointwiseModel):
        def forward(self, x):
            if x.shape[0] > 1 or max(x.shape[2:]) > 32:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
            return super().forward(x)

    img = rng_image((40, 40, 40), seed=13)
    model = Greedy(dim=3)
    with pytest.warns(RuntimeWarning, match="out of memory") as rec:
        pred = predict(model, img, patch_size=64, batch_size=4, device="cpu")
    msgs = " ".join(str(w.message) for w in rec)
    assert "batch size 1" in msgs and "window (32, 32, 32)" in msgs
    fg, _, _ = expected_views(model, normalize_intensity(img))
    assert np.allclose(pred.fg, fg, atol=1e-5)

    class Hopeless(PointwiseModel):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CVBMInputError, match="out of memory"):
            predict(Hopeless(dim=3), img, patch_size=32, device="cpu")


# ------------------------------------------------------------------------------------------
# the real network (width 4)
# ------------------------------------------------------------------------------------------


def test_real_cvbmnet_3d():
    torch.manual_seed(0)
    model = CVBMNet(dim=3, num_classes=2, width=4)
    img = rng_image((20, 40, 36), seed=14)
    pred = predict(model, img, patch_size=32, overlap=0.25, device="cpu", mode="avg")
    assert pred.fg.shape == pred.bg.shape == pred.mix.shape == (2, 20, 40, 36)
    for view in (pred.fg, pred.bg, pred.mix):
        assert view.dtype == np.float32 and np.allclose(view.sum(0), 1.0, atol=1e-4)
    assert np.array_equal(pred.labels, (0.5 * (pred.fg + pred.bg)).argmax(0))
    fg_only = predict(model, img, patch_size=32, overlap=0.25, device="cpu", heads="fg")
    assert np.allclose(fg_only.fg, pred.fg, atol=1e-5)

    # one window covering the whole volume == a direct forward of the network
    img32 = rng_image((32, 32, 32), seed=15)
    pred32 = predict(model, img32, patch_size=32, device="cpu")
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(normalize_intensity(img32))[None, None])
    assert np.allclose(pred32.fg, torch.softmax(out.fg, 1)[0].numpy(), atol=1e-5)
    assert np.allclose(pred32.mix, torch.softmax(out.mix, 1)[0].numpy(), atol=1e-5)
    assert np.allclose(pred32.bg, bg_view(out.bg)[0].numpy(), atol=1e-5)


def test_real_cvbmnet_2d_slice_wise():
    torch.manual_seed(0)
    model = CVBMNet(dim=2, num_classes=4, width=4)
    img = rng_image((3, 40, 50), seed=16)
    a = predict(model, img, slice_size=(64, 64), device="cpu", mode="mix")
    assert a.fg.shape == (4, 3, 40, 50) and a.labels.shape == (3, 40, 50)
    assert a.labels.max() < 4 and np.allclose(a.mix.sum(0), 1.0, atol=1e-4)
    b = predict(model, img, patch_size=32, device="cpu", heads="fg")
    assert b.fg.shape == (4, 3, 40, 50) and b.bg is None
