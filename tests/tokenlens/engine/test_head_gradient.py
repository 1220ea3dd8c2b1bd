"""The closed-form head gradient (engine/head_gradient.py) against float64 autograd through the LM head.

On a token the model is almost sure of (p_y > 0.9999) the textbook form W_y - p^T W cancels in float32;
the well-conditioned form s W_y - p_masked^T W must stay as close to float64 as float32 allows, and plain
float32 autograd (what Inseq computes) must be measurably worse, or the test proves nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tokenlens.engine.head_gradient import HeadGradient
from tokenlens.models import LoadedModel, load_model

FUNCTIONS = ("probability", "logprob", "logit")


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir: Path) -> LoadedModel:
    return load_model(str(tiny_llama_dir), device="cpu")


def attributed(logits: torch.Tensor, target: int, function: str) -> torch.Tensor:
    if function == "logit":
        return logits[target]
    if function == "logprob":
        return logits.log_softmax(-1)[target]
    return logits.softmax(-1)[target]


def autograd_cotangent(weight: torch.Tensor, hidden: torch.Tensor, target: int, function: str) -> torch.Tensor:
    """d f / d h by autograd through the head, in `weight`'s dtype."""
    point = hidden.to(weight.dtype).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(attributed(point @ weight.T, target, function), point)
    return grad


def confident_hidden(weight: torch.Tensor, target: int, gap: float) -> torch.Tensor:
    """A hidden state along W_y scaled so that 1 - p_y is close to `gap` (found by bisection in float64)."""
    w64 = weight.double()
    direction = w64[target] / w64[target].norm()
    low, high = 0.0, 1e4
    for _ in range(200):
        middle = (low + high) / 2
        p_y = float((middle * direction @ w64.T).softmax(-1)[target])
        low, high = (middle, high) if 1 - p_y > gap else (low, middle)
    hidden: torch.Tensor = (high * direction).float()
    return hidden


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm())


@pytest.mark.parametrize("function", FUNCTIONS)
def test_closed_form_equals_float64_autograd_on_ordinary_tokens(tiny_llama: LoadedModel, function: str) -> None:
    head = HeadGradient(tiny_llama, function)
    torch.manual_seed(1)
    hidden = torch.randn(5, head.weight.shape[1])
    targets = torch.tensor([3, 17, 400, 9000, 12])
    cotangents, p_y = head(hidden, targets)
    w64 = head.weight.double()
    for row, target in enumerate(targets.tolist()):
        want = autograd_cotangent(w64, hidden[row], target, function)
        assert relative_error(cotangents[row], want) < 1e-5
        assert abs(float(p_y[row]) - float((hidden[row].double() @ w64.T).softmax(-1)[target])) < 1e-6


@pytest.mark.parametrize("function", ["probability", "logprob"])
def test_confident_token_is_ten_times_closer_to_float64_than_float32_autograd(
    tiny_llama: LoadedModel, function: str
) -> None:
    head = HeadGradient(tiny_llama, function)
    target = 4242
    hidden = confident_hidden(head.weight, target, gap=2e-5)
    cotangent, p_y = head(hidden[None], torch.tensor([target]))
    assert 0.9999 < float(p_y[0]) < 1.0
    want = autograd_cotangent(head.weight.double(), hidden, target, function)
    ours = relative_error(cotangent[0], want)
    plain = relative_error(autograd_cotangent(head.weight, hidden, target, function), want)
    assert ours < 1e-4, ours
    assert plain > 10 * ours, (plain, ours)
