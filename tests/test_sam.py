"""SAM / ASAM: the perturbation in closed form, the step, the closure form and state round trips."""
from __future__ import annotations

import copy

import torch

from saig_core.sam import SAM

# f(w) = 0.5 * sum(c * w^2): gradient c * w, known everywhere
C = torch.tensor([1.0, 2.0, -0.5, 3.0], dtype=torch.float64)
W0 = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)


def quadratic(w: torch.Tensor) -> torch.Tensor:
    return 0.5 * (C * w * w).sum()


def _grad(w: torch.Tensor) -> None:
    quadratic(w).backward()


def test_asam_perturbs_to_rho_w2_g_over_norm_of_abs_w_times_g():
    w = torch.nn.Parameter(W0.clone())
    opt = SAM([w], torch.optim.SGD, rho=2.0, adaptive=True, lr=0.1)
    _grad(w)
    g = C * W0
    expected = W0 + 2.0 * W0 ** 2 * g / torch.linalg.vector_norm(W0.abs() * g)
    opt.first_step(zero_grad=True)
    assert torch.allclose(w.detach(), expected, atol=1e-12)
    assert w.grad is None or torch.count_nonzero(w.grad) == 0


def test_plain_sam_perturbs_along_the_normalised_gradient():
    w = torch.nn.Parameter(W0.clone())
    opt = SAM([w], torch.optim.SGD, rho=0.05, adaptive=False, lr=0.1)
    _grad(w)
    g = C * W0
    opt.first_step()
    assert torch.allclose(w.detach(), W0 + 0.05 * g / torch.linalg.vector_norm(g), atol=1e-12)


def test_second_step_restores_w_and_steps_with_the_perturbed_gradient():
    w = torch.nn.Parameter(W0.clone())
    opt = SAM([w], torch.optim.SGD, rho=2.0, adaptive=True, lr=0.1)
    _grad(w)
    opt.first_step()
    perturbed = w.detach().clone()
    _grad(w)
    opt.second_step()
    assert torch.allclose(w.detach(), W0 - 0.1 * C * perturbed, atol=1e-12)


def test_perturbation_norm_spans_several_parameters_jointly():
    a = torch.nn.Parameter(W0[:2].clone())
    b = torch.nn.Parameter(W0[2:].clone())
    opt = SAM([{"params": [a]}, {"params": [b]}], torch.optim.SGD, rho=1.0, adaptive=True, lr=0.1)
    quadratic(torch.cat([a, b])).backward()
    opt.first_step()
    g = C * W0
    expected = W0 + W0 ** 2 * g / torch.linalg.vector_norm(W0.abs() * g)
    assert torch.allclose(torch.cat([a.detach(), b.detach()]), expected, atol=1e-12)


def test_step_with_closure_equals_first_and_second_step():
    w1 = torch.nn.Parameter(W0.clone())
    w2 = torch.nn.Parameter(W0.clone())
    o1 = SAM([w1], torch.optim.AdamW, lr=0.01, weight_decay=0.03)
    o2 = SAM([w2], torch.optim.AdamW, lr=0.01, weight_decay=0.03)
    for _ in range(3):
        def closure():
            o1.zero_grad()
            loss = quadratic(w1)
            loss.backward()
            return loss
        o1.step(closure)
        _grad(w2)
        o2.first_step()
        _grad(w2)
        o2.second_step()
    assert torch.allclose(w1.detach(), w2.detach(), atol=1e-12)


def test_state_dict_round_trip_continues_identically_and_shares_lr_with_the_base():
    def run(opt, w, steps):
        for _ in range(steps):
            _grad(w)
            opt.first_step()
            _grad(w)
            opt.second_step()

    w = torch.nn.Parameter(W0.clone())
    opt = SAM([w], torch.optim.AdamW, rho=2.0, lr=0.01, weight_decay=0.03)
    run(opt, w, 2)
    state = copy.deepcopy(opt.state_dict())  # as written to disk: later steps must not alias it
    saved_w = w.detach().clone()
    run(opt, w, 2)

    w2 = torch.nn.Parameter(saved_w.clone())
    opt2 = SAM([w2], torch.optim.AdamW, rho=2.0, lr=0.5, weight_decay=0.03)
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.base_optimizer.param_groups[0]["lr"] == 0.01
    run(opt2, w2, 2)
    assert torch.allclose(w.detach(), w2.detach(), atol=1e-12)

    opt2.param_groups[0]["lr"] = 0.123  # what a scheduler does
    assert opt2.base_optimizer.param_groups[0]["lr"] == 0.123


def test_non_finite_gradient_leaves_weights_unperturbed():
    w = torch.nn.Parameter(W0.clone())
    opt = SAM([w], torch.optim.SGD, lr=0.1)
    w.grad = torch.tensor([float("inf"), 0.0, 0.0, 0.0], dtype=torch.float64)
    opt.first_step()
    assert torch.equal(w.detach(), W0)
