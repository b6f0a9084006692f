"""Adaptive per-layer loss weights: shares, normalisation, EMA, learned uncertainty weights."""
import math

import pytest
import torch

from ddk_fast.distill import LossShareWeights, UncertaintyWeights, loss_share_weights


def test_loss_share_weights_proportional_and_normalised():
    losses = torch.tensor([1.0, 3.0, 4.0], requires_grad=True)
    w = loss_share_weights(losses)
    assert not w.requires_grad
    torch.testing.assert_close(w, torch.tensor([3 / 8, 9 / 8, 12 / 8]))
    assert w.mean().item() == pytest.approx(1.0)
    assert loss_share_weights(losses, normalize="sum").sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(loss_share_weights(losses, normalize=None), torch.tensor([1 / 8, 3 / 8, 4 / 8]))
    sharp = loss_share_weights(losses, power=2.0, normalize="sum")
    torch.testing.assert_close(sharp, torch.tensor([1.0, 9.0, 16.0]) / 26)
    flat = loss_share_weights(losses, power=0.0)
    torch.testing.assert_close(flat, torch.ones(3))
    assert torch.equal(loss_share_weights(torch.zeros(4)), torch.ones(4))  # all matched: uniform
    assert loss_share_weights([torch.tensor(2.0), torch.tensor(2.0)]).tolist() == [1.0, 1.0]


def test_loss_share_module_ema():
    module = LossShareWeights(2, momentum=0.5, normalize="sum")
    first = module(torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(first, torch.tensor([0.25, 0.75]))
    second = module(torch.tensor([3.0, 1.0]))  # EMA -> [2, 2]
    torch.testing.assert_close(second, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="expected 2"):
        module(torch.tensor([1.0, 2.0, 3.0]))


def test_uncertainty_weights_formula_and_optimum():
    module = UncertaintyWeights(3)
    losses = torch.tensor([0.5, 2.0, 8.0])
    assert module.combine(losses).item() == pytest.approx(losses.sum().item())  # s = 0
    with torch.no_grad():
        module.log_vars.copy_(torch.tensor([0.1, -0.2, 0.3]))
    s = module.log_vars.detach()
    want = (torch.exp(-s) * losses).sum() + s.sum()
    assert module(losses).item() == pytest.approx(want.item())
    torch.testing.assert_close(module.weights(), torch.exp(-s))
    # minimising over s gives s_l = log L_l, i.e. weights 1 / L_l
    opt = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        module.combine(losses).backward()
        opt.step()
    torch.testing.assert_close(module.log_vars.detach(), losses.log(), atol=2e-2, rtol=0)
    # gradient reaches the layer losses scaled by the weights
    layer_losses = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    module.combine(layer_losses).backward()
    torch.testing.assert_close(layer_losses.grad, module.weights().detach())


def test_bad_arguments():
    with pytest.raises(ValueError, match="normalize"):
        loss_share_weights(torch.ones(2), normalize="max")
    with pytest.raises(ValueError, match="1-D"):
        loss_share_weights(torch.ones(2, 2))
    with pytest.raises(ValueError, match="momentum"):
        LossShareWeights(2, momentum=1.0)
    assert math.isclose(UncertaintyWeights(2, init=math.log(2)).weights()[0].item(), 0.5)
