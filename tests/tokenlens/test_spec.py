"""RunSpec: validated once when built, frozen; build_batches is the one way a run becomes batches."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tokenlens import defaults
from tokenlens.batch import PromptRecord
from tokenlens.errors import MethodOptionError, TokenLensError, UnknownMethodError, UnknownModelAliasError
from tokenlens.spec import RunSpec, build_batches, model_for_workers, new_run_id


def records(n: int) -> list[PromptRecord]:
    return [PromptRecord(id=f"p{i}", prompt=f"prompt {i}") for i in range(n)]


def test_a_spec_fills_in_the_defaults_and_resolves_the_engine() -> None:
    spec = RunSpec(run_id="r1", model="org/model")
    assert (spec.method, spec.engine, spec.resolved_engine) == (defaults.METHOD, "auto", "native")
    assert spec.max_new_tokens == defaults.MAX_NEW_TOKENS and spec.chat_template is defaults.CHAT_TEMPLATE
    assert spec.method_params["attributed_fn"] == "logprob"  # the method's own default, filled in
    assert RunSpec(run_id="r1", model="org/model", method="lime").resolved_engine == "inseq"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.method = "attention"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.method_params["attributed_fn"] = "probability"  # type: ignore[index]


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"method": "salency"}, UnknownMethodError, "unknown attribution method 'salency'"),
        ({"method_params": {"n_steps": 4}}, MethodOptionError, "do not apply to method 'saliency'"),
        ({"method": "lime", "engine": "native"}, MethodOptionError, "no native engine"),
        ({"run_id": "../escape"}, TokenLensError, "not a safe file name"),
        ({"max_new_tokens": 0}, TokenLensError, "--max-new-tokens 0 must be from 1 to"),
        ({"batch_size": 0}, TokenLensError, "--batch-size 0 must be from 1 to"),
        ({"dtype": "float8"}, TokenLensError, "unknown dtype 'float8'"),
        ({"model": "smollm9-nope-instruct"}, UnknownModelAliasError, "unknown model alias"),
        ({"generation_params": {"max_new_tokens": 3}}, TokenLensError, "as its own setting"),
    ],
)
def test_a_bad_value_fails_when_the_spec_is_built(
    changes: dict[str, object], error: type[Exception], message: str
) -> None:
    settings: dict[str, object] = {"run_id": "r1", "model": "org/model", **changes}
    with pytest.raises(error, match=re.escape(message)):
        RunSpec(**settings)  # type: ignore[arg-type]


def test_build_batches_cuts_the_prompts_in_order_and_carries_the_spec() -> None:
    spec = RunSpec(
        run_id="r1", model="org/model", results_url="s3://bucket/x", method="integrated_gradients",
        engine="auto", method_params={"n_steps": 4}, max_new_tokens=7, generation_params={"do_sample": False},
        chat_template=False, dtype="bfloat16", batch_size=2,
    )  # fmt: skip
    batches = build_batches(spec, records(5), 2)
    assert [[p.id for p in b.prompts] for b in batches] == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    first = batches[0]
    assert (first.run_id, first.results_url, first.model, first.method, first.engine) == (
        "r1",
        "s3://bucket/x",
        "org/model",
        "integrated_gradients",
        "auto",
    )
    assert first.method_params == dict(spec.method_params) and first.method_params["n_steps"] == 4
    assert (first.max_new_tokens, first.generation_params, first.chat_template) == (7, {"do_sample": False}, False)
    assert build_batches(spec, [], 2) == []
    with pytest.raises(ValueError, match="at least 1"):
        build_batches(spec, records(1), 0)


def test_the_manifest_records_the_spec_and_a_local_model_by_its_absolute_path(tmp_path: Path) -> None:
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    spec = RunSpec(run_id="r1", model=str(model_dir), dtype="float16", generation_params={"do_sample": False})
    manifest = spec.manifest(["a", "b"], mode="embedded", source="prompts.jsonl")
    assert manifest.model == str(model_dir.resolve()) == model_for_workers(str(model_dir))
    assert manifest.dtype == "float16" and manifest.engine == "native"
    assert manifest.generation_params == {"max_new_tokens": defaults.MAX_NEW_TOKENS, "do_sample": False}
    assert (manifest.prompt_count, manifest.prompt_ids, manifest.mode) == (2, ["a", "b"], "embedded")
    assert build_batches(spec, records(1), 1)[0].model == str(model_dir.resolve())
    assert model_for_workers("org/not-a-path") == "org/not-a-path"


def test_new_run_ids_are_safe_and_distinct() -> None:
    first, second = new_run_id("integrated_gradients"), new_run_id("integrated_gradients")
    assert first != second and "-integrated-gradients-" in first
    RunSpec(run_id=first, model="org/model")  # a generated id always passes the spec's own check
