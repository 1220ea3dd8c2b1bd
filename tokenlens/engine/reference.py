"""The slow, plain reference the native engine is held to: one autograd pass per output token.

This is how Inseq attributes a generation: for output token k, a fresh forward and backward pass over the
prefix it sees, with autograd through the whole model and the LM head (no closed form). Run on a float64 copy
of the model it is the ground truth that tests and bench/bench_precision.py measure the engine against; run
on the float32 model it is "plain float32 autograd", the precision Inseq gets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenlens.engine.methods import NATIVE_METHODS, GradientMethod
from tokenlens.models import LoadedModel


def per_step_scores(
    loaded: LoadedModel,
    model: Any,
    input_ids: list[int],
    output_ids: list[int],
    method: str,
    options: dict[str, Any],
    contrast_ids: list[int] | None = None,
) -> np.ndarray:
    """Scores [n_out, n_in + n_out] of a gradient method, one autograd pass per output token, in `model`'s dtype.

    `loaded` gives the tokenizer and config (the IG baseline); `model` is the model to differentiate
    (`loaded.model` itself, or a copy in another dtype). `options` as validated by the registry.
    """
    import torch

    from tokenlens.engine.gradient_pass import baseline_ids

    if not isinstance(NATIVE_METHODS.get(method), GradientMethod):
        raise ValueError(f"the per-step reference covers the native gradient methods, not {method!r}")
    attributed_fn = str(options["attributed_fn"])
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    full = list(input_ids) + list(output_ids)
    n_in, n_out = len(input_ids), len(output_ids)
    rows = np.zeros((n_out, n_in + n_out))
    alphas, weights = [1.0], [1.0]
    if method == "integrated_gradients":
        alphas, weights = _integration_rule(int(options["n_steps"]))
    for k in range(n_out):
        prefix = torch.tensor([full[: n_in + k]], device=model.device)
        target = full[n_in + k]
        if attributed_fn.startswith("contrast_"):
            if contrast_ids is None:
                raise ValueError(f"attributed function {attributed_fn} needs contrast_ids")
            target = contrast_ids[k]
        with torch.no_grad():
            x = embed(prefix)
            base = embed(baseline_ids(loaded, prefix)) if method == "integrated_gradients" else torch.zeros_like(x)
        total = torch.zeros_like(x)
        for alpha, weight in zip(alphas, weights, strict=True):
            point = (base + alpha * (x - base)).requires_grad_(True)
            # Only the last position's logits matter for this step: the head runs on that one alone.
            logits = head(model.base_model(inputs_embeds=point).last_hidden_state[0, -1])
            score = _attributed(logits, target, attributed_fn)
            total += weight * torch.autograd.grad(score, point)[0]
        if method == "integrated_gradients":
            attribution = total * (x - base)
        elif method == "input_x_gradient":
            attribution = total * x
        else:
            attribution = total
        rows[k, : n_in + k] = attribution[0].norm(dim=-1).detach().double().cpu().numpy()
    return rows


def _attributed(logits: Any, target: int, attributed_fn: str) -> Any:
    """Inseq's step function of this name, from the full logits of one step."""
    if attributed_fn in ("logit", "contrast_logit"):
        return logits[target]
    if attributed_fn == "logprob":
        return logits.log_softmax(-1)[target]
    return logits.softmax(-1)[target]


def _integration_rule(n_steps: int) -> tuple[list[float], list[float]]:
    """Captum's own Gauss-Legendre rule (not the engine's copy of it)."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_fn, alpha_fn = approximation_parameters("gausslegendre")
    return list(alpha_fn(n_steps)), list(step_fn(n_steps))
