"""The native methods as objects: what each one needs, how it runs a batch and how it reduces a gradient.

The engine (engine/native.py) asks a method instead of comparing names: how many graph rows a prompt takes
(`graph_rows`: integration steps), whether it is a gradient method, whether it integrates from a baseline,
its integration steps, what it attributes, how a gradient becomes an attribution, and how to run one batch.
Each method also carries its registry entry (`spec`: summary and options), which engine/registry.py
collects, so adding a native method touches this file (plus its test) only.

Importing this module imports neither torch nor Inseq: the registry is read at CLI start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tokenlens.engine.options import (
    ATTRIBUTED_FN,
    HEADS,
    LAYERS,
    N_STEPS,
    SALIENCY_ATTRIBUTED_FN,
    TARGET_CHUNK,
    MethodSpec,
    option_table,
)
from tokenlens.errors import MethodOptionError

if TYPE_CHECKING:
    from tokenlens.engine.layout import BatchScores, Item
    from tokenlens.engine.memory import MemoryModel
    from tokenlens.models import LoadedModel

#: Both engines run every native method; Inseq's result is the reference the native one is tested against.
_ENGINES = ("native", "inseq")


class NativeMethod:
    """What the engine needs to know about one native method. Subclasses set `spec` and override the rest."""

    spec: ClassVar[MethodSpec]
    #: Gradient methods differentiate an attributed function; they take `target_chunk` and `attributed_fn`.
    is_gradient: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.spec.name

    def graph_rows(self, options: dict[str, Any]) -> int:
        """Rows one prompt occupies in the forward pass (integration steps for integrating methods)."""
        return 1

    def check_supported(self, loaded: LoadedModel, options: dict[str, Any]) -> None:
        """Fail before any work on a model or option set this method can't attribute exactly."""

    def batch_fits(self, memory: MemoryModel, prompts: int, width: int, options: dict[str, Any]) -> bool:
        """Whether `prompts` prompts padded to `width` fit the memory budget in one pass."""
        return prompts * self.graph_rows(options) <= memory.rows_that_fit(width)

    def alone_bytes(self, memory: MemoryModel, width: int, n_out: int, options: dict[str, Any]) -> int:
        """Peak memory of one prompt of `width` tokens (`n_out` of them attributed) in the smallest pieces the
        engine can cut it into; more than the device has means it can never run."""
        raise NotImplementedError

    def attribute_batch(
        self, loaded: LoadedModel, items: list[Item], options: dict[str, Any], chunk: int, step_group: int
    ) -> BatchScores:
        raise NotImplementedError


class GradientMethod(NativeMethod):
    """A method that reduces the gradient of the attributed function w.r.t. each source embedding."""

    is_gradient = True
    #: Integrates gradients from a baseline to the input (so its passes never see the input itself).
    integrates: ClassVar[bool] = False

    def check_supported(self, loaded: LoadedModel, options: dict[str, Any]) -> None:
        from tokenlens.engine.head_gradient import check_head_supported

        check_head_supported(loaded, self.name)

    def attributed_fn(self, options: dict[str, Any]) -> str:
        return str(options.get("attributed_fn") or self.spec.options["attributed_fn"].default)

    def steps(self, options: dict[str, Any]) -> tuple[list[float], list[float]]:
        """Interpolation points from the baseline (alphas) and their weights; one plain pass for most methods."""
        return [1.0], [1.0]

    def attribution(self, grad: Any, inputs: Any, baseline: Any) -> Any:
        """The attribution per source embedding, from the gradient [K, B, length, d] and the embeddings."""
        raise NotImplementedError

    def alone_bytes(self, memory: MemoryModel, width: int, n_out: int, options: dict[str, Any]) -> int:
        """One row's forward graph, one target slot's backward call and the head's row for it."""
        return width * (memory.graph_bytes(width) + memory.backward_bytes(width)) + memory.head_bytes(1)

    def attribute_batch(
        self, loaded: LoadedModel, items: list[Item], options: dict[str, Any], chunk: int, step_group: int
    ) -> BatchScores:
        from tokenlens.engine.attention import attention_implementation, memory_efficient_attention
        from tokenlens.engine.gradient_pass import gradient_batch

        # No attention weights are needed here: memory-efficient attention keeps no O(L^2) tensor per head in
        # the graph (engine/attention.py), and the memory model plans for that (memory.py).
        with attention_implementation(loaded.model, memory_efficient_attention(loaded.model)) as attention:
            batch = gradient_batch(loaded, items, self, options, chunk, step_group)
        batch.attention = attention
        return batch


class Saliency(GradientMethod):
    spec = MethodSpec(
        "saliency",
        "L2 norm of the gradient of each output token's score w.r.t. each source embedding",
        _ENGINES,
        option_table(SALIENCY_ATTRIBUTED_FN, TARGET_CHUNK),
    )

    def attribution(self, grad: Any, inputs: Any, baseline: Any) -> Any:
        return grad


class InputXGradient(GradientMethod):
    spec = MethodSpec(
        "input_x_gradient",
        "L2 norm of gradient x embedding, per source token",
        _ENGINES,
        option_table(ATTRIBUTED_FN, TARGET_CHUNK),
    )

    def attribution(self, grad: Any, inputs: Any, baseline: Any) -> Any:
        return grad * inputs


class IntegratedGradients(GradientMethod):
    """Captum's rule, as Inseq builds it: Gauss-Legendre steps, UNK baseline with EOS positions kept."""

    spec = MethodSpec(
        "integrated_gradients",
        "gradients integrated from an UNK baseline to the input (Captum/Inseq rule)",
        _ENGINES,
        option_table(N_STEPS, ATTRIBUTED_FN, TARGET_CHUNK),
    )
    integrates = True

    def graph_rows(self, options: dict[str, Any]) -> int:
        return int(options.get("n_steps") or N_STEPS.default)

    def steps(self, options: dict[str, Any]) -> tuple[list[float], list[float]]:
        """Captum's default: Gauss-Legendre nodes and weights rescaled from [-1, 1] to [0, 1]."""
        nodes, weights = np.polynomial.legendre.leggauss(self.graph_rows(options))
        return [float(a) for a in 0.5 * (1 + nodes)], [float(w) for w in 0.5 * weights]

    def attribution(self, grad: Any, inputs: Any, baseline: Any) -> Any:
        return grad * (inputs - baseline).float()

    def alone_bytes(self, memory: MemoryModel, width: int, n_out: int, options: dict[str, Any]) -> int:
        """One step per pass: the float32 sum over the passes beside the graph; before them, the plain pass for
        p(y) reads the head for every target (up to LM_HEAD_ROWS at once)."""
        passes = super().alone_bytes(memory, width, n_out, options)
        if self.graph_rows(options) > 1:
            passes += memory.accumulator_bytes(1, n_out, width)
        return max(passes, memory.head_bytes(n_out))


class Attention(NativeMethod):
    """The chosen layers' and heads' attention weights from one forward pass, averaged as Inseq does."""

    spec = MethodSpec(
        "attention",
        "attention weights of the chosen layers and heads, averaged",
        _ENGINES,
        option_table(LAYERS, HEADS),
    )

    def check_supported(self, loaded: LoadedModel, options: dict[str, Any]) -> None:
        self._layers_and_heads(loaded, options)

    def batch_fits(self, memory: MemoryModel, prompts: int, width: int, options: dict[str, Any]) -> bool:
        return prompts * memory.attention_bytes(width) <= memory.budget_bytes

    def alone_bytes(self, memory: MemoryModel, width: int, n_out: int, options: dict[str, Any]) -> int:
        return memory.attention_bytes(width) + memory.head_bytes(n_out)

    def attribute_batch(
        self, loaded: LoadedModel, items: list[Item], options: dict[str, Any], chunk: int, step_group: int
    ) -> BatchScores:
        import time

        import torch

        from tokenlens.engine.attention import attention_implementation
        from tokenlens.engine.head_gradient import HeadGradient, probabilities_from_hidden
        from tokenlens.engine.layout import BatchScores, build_layout
        from tokenlens.engine.memory import FORWARD, out_of_memory_phase

        layers, heads = self._layers_and_heads(loaded, options)
        layout = build_layout(loaded, items)
        scores, probabilities = layout.empty_scores(), layout.empty_probabilities()
        started = time.perf_counter()
        # Attention weights exist only under eager attention.
        with torch.no_grad(), attention_implementation(loaded.model, "eager"), out_of_memory_phase(FORWARD):
            output = loaded.model.base_model(
                input_ids=layout.ids[:, : layout.end],
                attention_mask=layout.mask[:, : layout.end],
                position_ids=layout.positions[:, : layout.end],
                output_attentions=True,
            )
            if not output.attentions:
                raise MethodOptionError(f"model {loaded.model_id} returned no attention weights; use --engine inseq")
            # Inseq averages over layers, then heads; with equal counts that is one mean over both. A sharded
            # model's layers (and their weights) live on several devices: gather them on the inputs' device.
            head_index = torch.tensor(heads)
            weights = torch.stack(
                [_heads_of(output.attentions[layer], head_index, layout.ids.device) for layer in layers], dim=1
            )
            mean = weights.float().mean(dim=(1, 2)).cpu().numpy()  # [B, query, key]
            head = HeadGradient(loaded, "probability")
            probabilities_from_hidden(layout, output.last_hidden_state, head, probabilities)
        forward_s = time.perf_counter() - started
        for position in range(layout.end):
            for row, k, _token in layout.targets_at(position):
                pad = layout.pads[row]
                scores[row][k, : position + 1 - pad] = mean[row, position, pad : position + 1]
        return BatchScores(scores, probabilities, forward_s, 0.0, attention="eager")

    @staticmethod
    def _layers_and_heads(loaded: LoadedModel, options: dict[str, Any]) -> tuple[list[int], list[int]]:
        from tokenlens.engine.memory import layer_head_counts

        n_layers, n_heads = layer_head_counts(loaded)
        return (
            _resolve_indices("layers", options.get("layers"), n_layers),
            _resolve_indices("heads", options.get("heads"), n_heads),
        )


def _heads_of(weights: Any, head_index: Any, device: Any) -> Any:
    """The chosen heads of one layer's attention weights [B, heads, query, key], on `device`."""
    return weights.index_select(1, head_index.to(weights.device)).to(device)


def _resolve_indices(name: str, values: list[int] | None, count: int) -> list[int]:
    """Layer or head indices (negative ones count from the end); all of them when None."""
    if values is None:
        return list(range(count))
    resolved = []
    for value in values:
        if not -count <= value < count:
            raise MethodOptionError(
                f"attention option {name} has {value}, but the model has {count} {name} "
                f"(valid: 0..{count - 1}, or negative from the end)"
            )
        resolved.append(value % count)
    if not resolved:
        raise MethodOptionError(f"attention option {name} is empty; leave it out to use all {count}")
    return resolved


#: Every native method by name, in the order `tokenlens methods` lists them.
NATIVE_METHODS: dict[str, NativeMethod] = {
    method.name: method for method in (Saliency(), InputXGradient(), IntegratedGradients(), Attention())
}


def native_method(name: str) -> NativeMethod:
    try:
        return NATIVE_METHODS[name]
    except KeyError:
        raise MethodOptionError(
            f"method {name!r} has no native engine (native methods: {', '.join(NATIVE_METHODS)}); "
            "run it with --engine inseq"
        ) from None
