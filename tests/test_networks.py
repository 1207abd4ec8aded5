"""Tests of the CVBM three-head network (spec 1)."""

import pytest
import torch
from torch import nn

from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.networks import CVBMNet, CVBMOutput, count_parameters


@pytest.mark.parametrize("norm", ["instance", "batch"])
@pytest.mark.parametrize(
    "dim, num_classes, millions", [(3, 2, 9.45), (2, 2, 1.81), (2, 4, 1.81)]
)
def test_parameter_count_matches_paper(dim, num_classes, millions, norm):
    net = CVBMNet(dim=dim, num_classes=num_classes, width=16, norm=norm)
    n = net.fg_parameter_count()
    assert round(n / 1e6, 2) == millions
    assert n == count_parameters(net.encoder) + count_parameters(net.decoder_fg)
    # The fg-only ablation is exactly E + D_fg.
    fg_only = CVBMNet(dim=dim, num_classes=num_classes, width=16, norm=norm,
                      background_branch=False)
    assert count_parameters(fg_only) == n
    assert count_parameters(net) == n + count_parameters(net.decoder_bg) + count_parameters(net.mix)


def test_mix_layer_is_1x1_over_concatenated_logits():
    net = CVBMNet(dim=3, num_classes=3, width=4)
    assert isinstance(net.mix, nn.Conv3d)
    assert net.mix.kernel_size == (1, 1, 1)
    assert (net.mix.in_channels, net.mix.out_channels) == (6, 3)


@pytest.mark.parametrize(
    "dim, shape, num_classes, bg_upsampling",
    [
        (3, (2, 1, 32, 32, 16), 2, "nearest"),
        (3, (1, 1, 16, 32, 48), 3, "transpose"),
        (2, (2, 1, 32, 48), 2, "nearest"),
        (2, (3, 1, 64, 32), 4, "transpose"),
    ],
)
def test_output_shapes(dim, shape, num_classes, bg_upsampling):
    torch.manual_seed(0)
    net = CVBMNet(dim=dim, num_classes=num_classes, width=4, bg_upsampling=bg_upsampling)
    attrs = (net.dim, net.num_classes, net.width, net.background_branch)
    assert attrs == (dim, num_classes, 4, True)
    out = net(torch.randn(shape))
    assert isinstance(out, CVBMOutput)
    expected = (shape[0], num_classes) + shape[2:]
    for logits in out:
        assert logits.shape == expected
        assert torch.isfinite(logits).all()
    # Gradients reach every parameter through the three heads.
    sum(o.square().mean() for o in out).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_in_channels():
    net = CVBMNet(dim=2, in_channels=3, width=4).eval()
    assert net.forward_fg(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("dim", [2, 3])
def test_forward_fg_matches_forward_and_skips_bg_branch(dim):
    torch.manual_seed(0)
    net = CVBMNet(dim=dim, width=4).eval()
    x = torch.randn((1, 1) + (32,) * dim)
    calls = []
    for name in ("decoder_bg", "mix"):
        getattr(net, name).register_forward_hook(lambda *args, name=name: calls.append(name))
    with torch.no_grad():
        full = net(x)
        assert calls == ["decoder_bg", "mix"]
        calls.clear()
        fg = net.forward_fg(x)
    assert calls == []
    torch.testing.assert_close(fg, full.fg)


def test_mix_is_psi_of_fg_and_bg():
    net = CVBMNet(dim=2, num_classes=3, width=4).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 32, 32))
        torch.testing.assert_close(out.mix, net.mix(torch.cat([out.fg, out.bg], dim=1)))


@pytest.mark.parametrize("dim", [2, 3])
def test_foreground_only_variant(dim):
    net = CVBMNet(dim=dim, width=4, background_branch=False)
    assert net.decoder_bg is None and net.mix is None and not net.background_branch
    assert not any(n.startswith(("decoder_bg", "mix")) for n, _ in net.named_parameters())
    x = torch.randn((2, 1) + (32,) * dim)
    out = net(x)
    assert out.bg is None and out.mix is None
    assert out.fg.shape == (2, 2) + (32,) * dim
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net.forward_fg(x), net(x).fg)


def test_bg_upsampling_options():
    nearest = CVBMNet(dim=3, width=4, bg_upsampling="nearest")
    transpose = CVBMNet(dim=3, width=4, bg_upsampling="transpose")
    assert any(isinstance(m, nn.Upsample) for m in nearest.decoder_bg.modules())
    assert not any(isinstance(m, nn.ConvTranspose3d) for m in nearest.decoder_bg.modules())
    assert any(isinstance(m, nn.ConvTranspose3d) for m in nearest.decoder_fg.modules())
    # "transpose" makes D_bg a twin of D_fg.
    assert count_parameters(transpose.decoder_bg) == count_parameters(transpose.decoder_fg)


def test_norm_option():
    batch = CVBMNet(dim=3, width=4, norm="batch")
    norms = [m for m in batch.modules() if isinstance(m, nn.BatchNorm3d)]
    assert norms and all(m.affine for m in norms)
    instance = CVBMNet(dim=3, width=4, norm="instance")
    assert not any(isinstance(m, nn.BatchNorm3d) for m in instance.modules())


@pytest.mark.parametrize("dim", [2, 3])
def test_instance_norm_equals_torch_instance_norm(dim):
    """"instance" is computed as GroupNorm(C, C): same outputs, parameters and keys as InstanceNorm."""
    torch.manual_seed(0)
    net = CVBMNet(dim=dim, width=4, norm="instance")
    norm = next(m for m in net.modules() if isinstance(m, nn.GroupNorm))
    reference = (nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d)(norm.num_channels, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    assert set(reference.state_dict()) == set(norm.state_dict()) == {"weight", "bias"}
    reference.load_state_dict(norm.state_dict())
    x = torch.randn((2, norm.num_channels) + (6,) * dim) * 3 + 1
    torch.testing.assert_close(norm(x), reference(x))


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError):
        CVBMNet(dim=1)
    with pytest.raises(ValueError):
        CVBMNet(norm="group")
    with pytest.raises(ValueError):
        CVBMNet(bg_upsampling="bicubic")
    net = CVBMNet(dim=2, width=4)
    assert net.size_divisor == 16
    with pytest.raises(CVBMInputError):
        net(torch.randn(1, 1, 40, 32))
    with pytest.raises(CVBMInputError):
        net.forward_fg(torch.randn(1, 1, 32, 32, 32))
