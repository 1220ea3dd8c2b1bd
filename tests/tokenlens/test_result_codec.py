"""Result files both ways: the json and compact formats, every seed variant, and the seed's own validators."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from tests.seed_validators import SeedAnalysisResult, ui_accepts
from tokenlens import defaults
from tokenlens.errors import TokenLensError
from tokenlens.result_codec import (
    ResultFormatError,
    as_plain_json,
    decode_result,
    encode_result,
    float32_text,
    load_document,
    load_document_and_matrix,
    read_metadata,
    resolve_format,
)
from tokenlens.schema import AnalysisData, AnalysisMetadata, AnalysisResult, TokenInfo

SEED_FILES = Path(__file__).parents[1] / "fixtures" / "seed_files"


def synthetic(n_in: int, n_out: int, seed: int = 0) -> AnalysisResult:
    """A result shaped like a real one: scores spread over orders of magnitude, zeros from each diagonal on."""
    rng = np.random.default_rng(seed)
    scores = rng.lognormal(mean=-4.0, sigma=1.5, size=(n_out, n_in + n_out)) * rng.choice([-1, 1], (n_out, 1))
    for i in range(n_out):
        scores[i, n_in + i :] = 0.0

    def tokens(count: int, base: int) -> list[TokenInfo]:
        return [TokenInfo(token=f"Ġt{base + k}", token_id=base + k, clean_token=f" t{base + k}") for k in range(count)]

    return AnalysisResult(
        metadata=AnalysisMetadata(
            llm_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            prompt="why?",
            run_id="r1",
            prompt_id="p1",
            generation_params={"max_new_tokens": n_out, "do_sample": False},
        ),
        data=AnalysisData(input_tokens=tokens(n_in, 0), output_tokens=tokens(n_out, 1000), association_matrix=scores),
    )


def test_json_is_plain_seed_valid_and_round_trips_exactly() -> None:
    result = synthetic(6, 5)
    encoded = encode_result(result, "json")
    assert encoded.format == "json" and encoded.content_encoding is None
    document = json.loads(encoded.body)
    assert encoded.body.startswith(b'{"metadata":{')
    assert "normalized_association" not in document["data"]  # computed on read
    assert document["metadata"]["version"] == "1.1.0" and document["metadata"]["tokenlens_format"] == "2.1"
    assert document["metadata"]["llm_version"] == "SmolLM2-135M-Instruct"
    assert ui_accepts(document)
    SeedAnalysisResult.model_validate_json(encoded.body)
    again = decode_result(encoded.body)
    assert again == result
    assert again.data.normalized_association == result.data.normalized_association


def test_scores_are_written_as_the_shortest_float32_text() -> None:
    matrix = np.array([[np.float32(0.1), np.float32(1 / 3), 0.0, -0.0], [np.float32(2.5e-7), 7.0, 1e30, 0.0]])
    assert float32_text(matrix) == "[[0.1,0.33333334,0,0],[2.5e-07,7.0,1e+30,0]]"
    assert np.float32(float("0.33333334")) == np.float32(1 / 3) and np.float32(float("2.5e-07")) == np.float32(2.5e-7)


def test_a_json_files_matrix_is_parsed_apart_to_the_same_numbers() -> None:
    result = synthetic(7, 6)
    result.data.association_matrix[0][0] = 1e-30  # shortest texts with exponents, zeros, negatives
    result.metadata.prompt = 'say ,"association_matrix":[[1]]}} and ]]}}'  # the key in the text does not fool it
    body = encode_result(result, "json").body
    document, matrix = load_document_and_matrix(body)
    assert matrix is not None and "association_matrix" not in document["data"]
    assert np.array_equal(matrix, np.asarray(load_document(body)["data"]["association_matrix"], dtype=np.float64))
    assert document["metadata"] == load_document(body)["metadata"]


@pytest.mark.parametrize(
    "tail",
    [
        "[[1,2],[3]]",  # rows of unequal length
        "[[1,2],[3,[4]]]",
        '[[1,2]],"x":[[3]]',  # not the data object's last member
        "[[1, 2]]",
        "[[]]",
    ],
)
def test_a_matrix_that_is_not_plain_rows_of_numbers_is_left_to_the_json_parser(tail: str) -> None:
    body = ('{"metadata":{"prompt":"x"},"data":{"input_tokens":[],"association_matrix":' + tail + "}}").encode()
    document, matrix = load_document_and_matrix(body)
    assert matrix is None and document == json.loads(body)


def test_a_compact_file_keeps_its_packed_matrix() -> None:
    body = encode_result(synthetic(7, 6), "compact").body
    document, matrix = load_document_and_matrix(body)
    assert matrix is None and document == load_document(body)


def test_compact_is_gzip_json_with_a_packed_matrix_and_stated_precision() -> None:
    result = synthetic(40, 30)
    encoded = encode_result(result, "compact")
    assert (encoded.format, encoded.content_type, encoded.content_encoding) == ("compact", "application/json", "gzip")
    document = json.loads(gzip.decompress(encoded.body))
    assert document["data"]["association_matrix"]["encoding"] == "rownorm-float16-zlib-base64"
    back = decode_result(encoded.body)
    assert back.metadata == result.metadata and back.data.output_tokens == result.data.output_tokens
    raw, decoded = np.array(result.data.association_matrix), np.array(back.data.association_matrix)
    peaks = np.abs(raw).max(axis=1, keepdims=True)
    assert np.abs(np.array(back.data.normalized_association) - raw / peaks).max() <= 2.5e-4
    assert (np.abs(decoded - raw) <= 2.5e-4 * peaks).all()
    assert (decoded[np.triu_indices(30, k=0)[0], 40 + np.triu_indices(30, k=0)[1]] == 0).all()


def test_compact_meets_two_bytes_per_cell_at_512_by_512() -> None:
    result = synthetic(512, 512)
    cells = 512 * 1024
    assert len(encode_result(result, "compact").body) / cells <= 2.0


def test_auto_writes_compact_only_above_the_threshold() -> None:
    assert resolve_format("auto", 10, 20) == "json"
    assert resolve_format("auto", 1000, defaults.COMPACT_ABOVE_CELLS // 1000) == "json"
    assert resolve_format("auto", 1000, defaults.COMPACT_ABOVE_CELLS // 1000 + 1) == "compact"
    assert resolve_format("json", 10_000, 10_000) == "json" and resolve_format("compact", 1, 2) == "compact"
    with pytest.raises(TokenLensError, match="unknown result format 'csv'; use one of auto, json, compact"):
        resolve_format("csv", 1, 2)


def test_edge_shapes_survive_both_formats() -> None:
    document = synthetic(3, 2).model_dump(mode="json", exclude={"data": {"normalized_association"}})
    document["data"]["association_matrix"][1] = [0.0] * 5
    zero_row = AnalysisResult.model_validate(document)
    no_output = AnalysisResult.model_validate(
        {
            "metadata": {"llm_id": "m", "prompt": "p"},
            "data": {
                "input_tokens": [{"token": "a", "token_id": 1, "clean_token": "a"}],
                "output_tokens": [],
                "association_matrix": [],
            },
        }
    )
    for result in (zero_row, no_output):
        for result_format in ("json", "compact"):
            back = decode_result(encode_result(result, result_format).body)
            peak = np.abs(np.array(result.data.association_matrix)).max(initial=0.0)
            assert np.allclose(back.data.association_matrix, result.data.association_matrix, rtol=0, atol=2.5e-4 * peak)
            assert np.allclose(back.data.normalized_association, result.data.normalized_association, atol=2.5e-4)
            assert len(back.data.association_matrix) == len(result.data.output_tokens)


def test_metadata_is_read_without_the_matrices_in_both_formats() -> None:
    result = synthetic(300, 200)
    for result_format in ("json", "compact"):
        body = encode_result(result, result_format).body
        assert read_metadata(body)["prompt"] == "why?"
    # A prompt of multi-byte characters, long enough to be split between decompressed chunks, reads whole.
    rng = random.Random(0)
    wide = synthetic(3, 2)
    wide.metadata.prompt = "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(60_000))  # hardly compressible
    assert read_metadata(encode_result(wide, "compact").body)["prompt"] == wide.metadata.prompt
    pretty = json.dumps(json.loads(encode_result(result, "json").body), indent=2).encode()
    assert read_metadata(pretty)["prompt_id"] == "p1"  # another layout: parsed whole


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"not json", "malformed JSON"),
        (b"[1, 2]", "not a result file"),
        (b'{"metadata": {}, "data": {"input_tokens": [], "output_tokens": []}}', "association_matrix is missing"),
        (gzip.compress(b'{"metadata": {')[:-6], "not a TokenLens result file"),
        (b"\xff\xfe", "not a TokenLens result file"),
    ],
)
def test_unreadable_files_name_the_file_and_the_problem(body: bytes, problem: str) -> None:
    with pytest.raises(ResultFormatError, match=f"runs/r/results/p.json: .*{problem}"):
        decode_result(body, source="runs/r/results/p.json")


def test_a_damaged_compact_matrix_is_refused_not_misread() -> None:
    document = json.loads(gzip.decompress(encode_result(synthetic(4, 3), "compact").body))
    document["data"]["association_matrix"]["shape"] = [3, 8]
    with pytest.raises(ResultFormatError, match="damaged compact matrix"):
        decode_result(json.dumps(document).encode(), source="x.json")


def test_a_tokenlens_2_0_file_reads_and_becomes_seed_valid() -> None:
    legacy = {
        "metadata": {"llm_id": "smollm2-135m-instruct", "prompt": "hi", "version": "2.0", "attribution_method": "x"},
        "data": {
            "input_tokens": [{"token": "a", "token_id": 1, "clean_token": "a"}],
            "output_tokens": [{"token": "b", "token_id": 2, "clean_token": "b", "probability": 0.5}],
            "association_matrix": [[0.30000001192092896, 0.0]],
            "normalized_association": [[1.0, 0.0]],
        },
    }
    result = decode_result(json.dumps(legacy).encode())
    assert (result.metadata.version, result.metadata.tokenlens_format) == ("1.1.0", "2.0")
    assert result.metadata.attribution_method == "x" and result.data.association_matrix == [[np.float32(0.3), 0.0]]
    plain = json.loads(as_plain_json(json.dumps(legacy).encode()))
    assert ui_accepts(plain) and SeedAnalysisResult.model_validate(plain)
    assert plain["metadata"]["generation_params"] == {"max_new_tokens": 1}  # the seed UI needs it: the output's length


# --- seed files ------------------------------------------------------------------------------------------------

#: Each fixture (written from the seed's schema and code), what TokenLens reads from it, and which of the seed's
#: own validators accept the file as it is: the UI refuses its extractor's padded and Inseq-shaped matrices, the
#: pydantic model the UI's compressed form.
SEED_CASES = {
    "v1_0_0_gradient.json": {
        "method": "unknown",
        "matrix": [[0.25, 1.5, 0, 0, 0], [0.5, 0.75, 2.0, 0, 0], [0.125, 0.5, 0.25, 1.0, 0]],
        "ui": True,
    },
    "v1_0_1_padded_no_normalized.json": {
        "method": "unknown",
        "matrix": [[0.5, 0.25, 2.0, 0, 0], [0.125, 0.0625, 0.5, 1.0, 0]],
        "ui": False,
    },
    "v1_1_0_inseq_target.json": {
        "method": "integrated_gradients",
        "matrix": [[0.5, 1.5, 0, 0], [0.25, 0.75, 2.0, 0]],
        "ui": False,
    },
    "v1_1_0_ui_compressed.json": {
        "method": "attention",
        "matrix": [[0.6, 0.4, 0, 0], [0.1, 0.2, 0.7, 0]],
        "ui": True,
        "pydantic": False,
    },
    "v1_1_0_gradient_null_method.json": {"method": "unknown", "matrix": [[3.0, -1.5, 0]], "ui": True},
}


@pytest.mark.parametrize("name", sorted(SEED_CASES))
def test_every_seed_variant_reads_with_its_real_method_and_layout(name: str) -> None:
    expected = SEED_CASES[name]
    raw = (SEED_FILES / name).read_bytes()
    seed = json.loads(raw)
    # The fixtures are what the seed writes; each of its validators takes only some of them.
    assert ui_accepts(seed) is expected["ui"]
    try:
        SeedAnalysisResult.model_validate(seed)
    except ValueError:
        assert expected.get("pydantic", True) is False
    else:
        assert expected.get("pydantic", True) is True

    result = decode_result(raw, source=name)
    matrix = np.array(expected["matrix"], dtype=np.float32).astype(np.float64)
    assert result.data.association_matrix == matrix.tolist()
    assert result.metadata.attribution_method == expected["method"]
    assert result.metadata.version == seed["metadata"]["version"] and result.metadata.tokenlens_format is None
    assert len(result.data.output_tokens) == matrix.shape[0]
    # The seed's own normalisation (column-wise min-max) is replaced by TokenLens's: each row over its peak.
    peaks = np.abs(matrix).max(axis=1, keepdims=True)
    assert np.allclose(result.data.normalized_association, matrix / peaks)
    # What TokenLens serves for it (the UI, a download) passes both seed validators.
    plain = json.loads(as_plain_json(raw, source=name))
    assert ui_accepts(plain) and SeedAnalysisResult.model_validate(plain)
    assert plain["metadata"]["attribution_method"] == expected["method"]


def test_seed_1_1_0_fields_are_kept() -> None:
    result = decode_result((SEED_FILES / "v1_1_0_inseq_target.json").read_bytes())
    assert result.data.attribution_source == "target" and result.data.raw_dimensions == [4, 2]
    assert [t.clean_token for t in result.data.output_tokens] == ["the", "capital"]  # the prompt is not output
    assert load_document((SEED_FILES / "v1_0_0_gradient.json").read_bytes())["metadata"]["version"] == "1.0.0"


def test_a_seed_matrix_that_fits_no_layout_is_refused_clearly() -> None:
    seed = json.loads((SEED_FILES / "v1_0_0_gradient.json").read_bytes())
    seed["data"]["association_matrix"] = [[1.0] * 9] * 4
    with pytest.raises(ResultFormatError, match=r"seed.json: .* is 4x9, which fits neither 3 output tokens x 5"):
        decode_result(json.dumps(seed).encode(), source="seed.json")
