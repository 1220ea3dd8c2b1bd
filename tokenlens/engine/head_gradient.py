"""The attributed function's gradient w.r.t. the model's last hidden state, in closed form.

The native engine never runs a vocabulary-sized backward: with logits z = W h + b and p = softmax(z), the
gradient of what is attributed for output token y (Inseq's step functions of the same names) is

- logit:          d z_y / dh       = W_y
- logprob:        d log p_y / dh   = W_y - p^T W
- probability:    d p_y / dh       = p_y (W_y - p^T W)
- contrast_logit: d z_c / dh       = W_c                (c: the prompt's contrast token for this step)
- contrast_prob:  d p_c / dh       = p_c (W_c - p^T W)

`W_y - p^T W` is never computed as written. For a confident token (p_y close to 1) both terms are nearly
equal vectors and float32 loses most of their difference: measured on SmolLM2, rows of p > 0.999 tokens came
out up to 7.3e-3 away from a float64 reference. Since sum_k p_k = 1, it equals
sum_{k != y} p_k (W_y - W_k) = s W_y - p_masked^T W, with s = sum_{k != y} p_k summed from the small
probabilities themselves (never 1 - p_y): every term is of the size of the result, and the error stays
relative to it. The same holds for the contrast token c.
"""

from __future__ import annotations

from typing import Any

from tokenlens.engine.layout import LM_HEAD_ROWS, Layout
from tokenlens.errors import MethodOptionError, TokenLensError
from tokenlens.models import LoadedModel, check_closed_form_head

#: Attributed functions that differentiate the contrast token rather than the output token.
_CONTRAST_FNS = {"contrast_prob": "probability", "contrast_logit": "logit"}


def check_head_supported(loaded: LoadedModel, method: str) -> None:
    """Fail before any work on a model whose logits the closed form can't reproduce exactly."""
    try:  # one list of logit and head transforms, with its reasons: tokenlens.models.HEAD_TRANSFORM_FIELDS
        check_closed_form_head(loaded.model.config, loaded.model_id, method)
    except TokenLensError as exc:
        raise MethodOptionError(str(exc)) from None
    head = loaded.model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise MethodOptionError(f"model {loaded.model_id} has no output embedding layer; use --engine inseq")


class HeadGradient:
    """Cotangents for the last hidden state, one per target, for one attributed function."""

    def __init__(self, loaded: LoadedModel, attributed_fn: str) -> None:
        import torch

        head = loaded.model.get_output_embeddings()
        self.weight = head.weight.detach()
        # Where the head computes: the weight's own device. In a sharded model that need not be the last hidden
        # state's (a head tied to the input embedding sits on the first GPU, the last layer on the last), and
        # calling `head` itself would go through accelerate's hooks; so rows move to the weight, never the weight.
        self.device = self.weight.device
        bias = getattr(head, "bias", None)
        self.bias = bias.detach() if bias is not None else None
        # The softmax and s W_y run in at least float32; p_masked^T W stays in the weight's dtype (a matmul
        # accumulates in float32 anyway), as autograd through the head would do it, and W is never copied.
        self.compute_dtype = torch.promote_types(self.weight.dtype, torch.float32)
        self.contrastive = attributed_fn in _CONTRAST_FNS
        self.function = _CONTRAST_FNS.get(attributed_fn, attributed_fn)

    def __call__(self, hidden: Any, token_ids: Any, contrast_ids: Any = None) -> tuple[Any, Any]:
        """Cotangents [n, d] (hidden's dtype) and p_y [n] (at least float32) for hidden states [n, d] and
        targets [n]; contrastive functions differentiate `contrast_ids` [n] instead of the targets."""
        import torch

        home = hidden.device
        hidden, token_ids = hidden.to(self.device), token_ids.to(self.device)
        contrast_ids = contrast_ids.to(self.device) if contrast_ids is not None else None
        cotangents, probabilities = [], []
        for start in range(0, hidden.shape[0], LM_HEAD_ROWS):
            rows = slice(start, start + LM_HEAD_ROWS)
            p = self.distribution(hidden[rows])
            y = token_ids[rows]
            p_y = p.gather(-1, y[:, None]).squeeze(-1)
            attributed = contrast_ids[rows] if self.contrastive else y
            cotangents.append(self._cotangent(p, attributed).to(hidden.dtype))
            probabilities.append(p_y)
        return torch.cat(cotangents).to(home), torch.cat(probabilities).to(home)

    def distribution(self, hidden: Any) -> Any:
        """softmax(W h + b) in at least float32, for hidden states [n, d]; on the head's device."""
        import torch

        logits = hidden.to(self.device) @ self.weight.T
        if self.bias is not None:
            logits = logits + self.bias
        return torch.softmax(logits.to(self.compute_dtype), dim=-1)

    def _cotangent(self, p: Any, token_ids: Any) -> Any:
        w_y = self.weight[token_ids].to(self.compute_dtype)
        if self.function == "logit":
            return w_y
        others = p.scatter(-1, token_ids[:, None], 0.0)  # p_k for k != y, exactly as computed
        rest = others.sum(dim=-1, keepdim=True)  # s = sum_{k != y} p_k, accurate even when p_y ~ 1
        direction = rest * w_y - (others.to(self.weight.dtype) @ self.weight).to(self.compute_dtype)
        if self.function == "logprob":
            return direction
        return p.gather(-1, token_ids[:, None]) * direction


def probabilities_from_hidden(
    layout: Layout, hidden: Any, head: HeadGradient, probabilities: list[list[float]]
) -> None:
    """Fill p(output token | prefix) for every target of the batch from the last hidden states [B, width, d]."""
    import torch

    picks = [
        (row, k, position, token) for position in range(layout.end) for row, k, token in layout.targets_at(position)
    ]
    for start in range(0, len(picks), LM_HEAD_ROWS):
        part = picks[start : start + LM_HEAD_ROWS]
        rows = torch.tensor([p[0] for p in part], device=hidden.device)
        positions = torch.tensor([p[2] for p in part], device=hidden.device)
        tokens = torch.tensor([p[3] for p in part], device=head.device)
        p_y = head.distribution(hidden[rows, positions]).gather(-1, tokens[:, None]).squeeze(-1)
        for (row, k, _position, _token), value in zip(part, p_y.tolist(), strict=True):
            probabilities[row][k] = float(value)
