"""Result files as bytes, both ways: the one encoder and the one decoder every TokenLens reader and writer uses.

Two formats are written (`encode_result`), and both are TokenLens JSON:

- ``json``: plain JSON that the seed project's validators accept. Raw scores are float32 written as their
  shortest round-trip text; ``normalized_association`` is not stored (it is computed on read, see below).
- ``compact``: the same JSON document, gzip-compressed (stored with ``Content-Encoding: gzip``), whose
  ``association_matrix`` is packed: each row's largest absolute value as float32, and each row divided by it
  (so in [-1, 1]) as float16, only the columns a row can depend on (row i: ``n_in + i`` values), byte planes
  split, zlib-compressed and base64-encoded. Normalised values are kept to within 2.5e-4 (half a float16 unit
  at 1.0), raw values to within that times the row's largest absolute value.

``auto`` (the default) writes ``compact`` for matrices of more than `defaults.COMPACT_ABOVE_CELLS` cells and
``json`` below. A file's format is told by its first bytes (gzip's magic, else JSON), never by its key, so a
reader needs no run.json to open it.

`decode_result` reads every file TokenLens ever wrote (format 2.0 included) and every seed file variant
(versions 1.0.0 to 1.1.0; without ``normalized_association``; the seed UI's compressed matrices
``{values, indices, shape, isCompressed}``; 1.1.0's ``attribution_source``/``raw_dimensions`` and Inseq's
position-by-step matrices; ``attribution_method`` as the method). ``normalized_association`` is always
computed on read from the raw scores (each row over its largest absolute value): the seed's own
normalisation is column-wise min-max, which does not keep a row's zeros at zero.
"""

from __future__ import annotations

import base64
import codecs
import gzip
import json
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenlens import defaults
from tokenlens.errors import TokenLensError
from tokenlens.schema import SEED_VERSIONS, TOKENLENS_FORMAT, AnalysisResult, llm_version_of

FORMATS = ("json", "compact")
#: The `--format` choices: a format, or "auto" (compact above `defaults.COMPACT_ABOVE_CELLS` cells).
FORMAT_CHOICES = ("auto", *FORMATS)
JSON_CONTENT_TYPE = "application/json"
GZIP_MAGIC = b"\x1f\x8b"
#: The `encoding` tag of a packed matrix (compact format).
PACKED_ENCODING = "rownorm-float16-zlib-base64"
#: Attribution sources of seed 1.1.0 files converted from Inseq, whose matrices are positions x steps.
INSEQ_SOURCES = ("source", "target")


class ResultFormatError(TokenLensError, ValueError):
    """A result file that can't be read: its message names the file and what is wrong with it."""


@dataclass(frozen=True)
class EncodedResult:
    """A result as stored: the bytes, and the metadata an object store should keep with them."""

    body: bytes
    format: str
    content_type: str = JSON_CONTENT_TYPE
    content_encoding: str | None = None


def check_format(result_format: str) -> str:
    """`result_format` if it is one of `FORMAT_CHOICES`, else a `TokenLensError` that lists them."""
    if result_format not in FORMAT_CHOICES:
        raise TokenLensError(f"unknown result format {result_format!r}; use one of {', '.join(FORMAT_CHOICES)}")
    return result_format


def resolve_format(result_format: str, n_rows: int, n_columns: int) -> str:
    """The format a result of `n_rows` x `n_columns` cells is written in under `result_format`."""
    if check_format(result_format) != "auto":
        return result_format
    return "compact" if n_rows * n_columns > defaults.COMPACT_ABOVE_CELLS else "json"


# --- writing -----------------------------------------------------------------------------------------------


def float32_text(matrix: np.ndarray) -> str:
    """A matrix as a JSON list of rows, each value float32 in its shortest round-trip text (0 as ``0``)."""
    if matrix.size == 0:
        return "[" + ",".join("[]" for _ in range(matrix.shape[0])) + "]"
    texts = matrix.astype(np.float32).astype(str)
    texts[matrix == 0] = "0"
    return "[" + ",".join("[" + ",".join(row) + "]" for row in texts.tolist()) + "]"


def _document(result: AnalysisResult) -> dict[str, Any]:
    """The file's JSON object without matrices (they are written by the format)."""
    data = result.data
    return {
        "metadata": result.metadata.model_dump(mode="json"),
        "data": {
            "input_tokens": [token.model_dump(mode="json") for token in data.input_tokens],
            "output_tokens": [token.model_dump(mode="json") for token in data.output_tokens],
            "attribution_source": data.attribution_source,
            "raw_dimensions": data.raw_dimensions,
        },
    }


def _with_matrix(document: dict[str, Any], matrix_json: str) -> bytes:
    # The matrix text is spliced in, not re-parsed: json.dumps would write every float as float64 again.
    head = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if not head.endswith("}}"):
        raise AssertionError("a result document ends with its data object")
    return (head[:-2] + ',"association_matrix":' + matrix_json + "}}").encode("utf-8")


def pack_matrix(matrix: np.ndarray, n_in: int) -> dict[str, Any]:
    """The compact form of a raw matrix (see the module docstring); `unpack_matrix` reverses it."""
    n_out, width = matrix.shape
    values = np.asarray(matrix, dtype=np.float32)
    peaks = np.abs(values).max(axis=1) if width else np.zeros(n_out, dtype=np.float32)
    scale = np.where(peaks > 0, peaks, 1).astype(np.float64)
    normalized = (values.astype(np.float64) / scale[:, None]).astype("<f2")
    visible = np.concatenate([normalized[i, : n_in + i] for i in range(n_out)]) if n_out else normalized.ravel()
    # High and low bytes apart: the high bytes (sign, exponent) are alike and compress well on their own.
    planes = np.ascontiguousarray(visible.view(np.uint8).reshape(-1, 2).T).tobytes()
    return {
        "encoding": PACKED_ENCODING,
        "shape": [n_out, width],
        "n_in": n_in,
        "row_peaks": base64.b64encode(peaks.astype("<f4").tobytes()).decode("ascii"),
        "values": base64.b64encode(zlib.compress(planes, 9)).decode("ascii"),
    }


def encode_result(result: AnalysisResult, result_format: str = "auto") -> EncodedResult:
    """`result` as the bytes of a result file in `result_format` ("json", "compact" or "auto")."""
    data = result.data
    matrix = np.asarray(data.association_matrix, dtype=np.float64).reshape(
        len(data.output_tokens), len(data.input_tokens) + len(data.output_tokens)
    )
    chosen = resolve_format(result_format, *matrix.shape)
    document = _document(result)
    if chosen == "json":
        return EncodedResult(_with_matrix(document, float32_text(matrix)), "json")
    packed = json.dumps(pack_matrix(matrix, len(data.input_tokens)), separators=(",", ":"))
    body = gzip.compress(_with_matrix(document, packed), compresslevel=6, mtime=0)
    return EncodedResult(body, "compact", content_encoding="gzip")


# --- reading -----------------------------------------------------------------------------------------------


def _text(raw: bytes, source: str) -> str:
    try:
        plain = gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw
        return plain.decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise ResultFormatError(f"{source}: not a TokenLens result file ({type(exc).__name__}: {exc})") from None


def load_document(raw: bytes, source: str = "result") -> dict[str, Any]:
    """The JSON object of a result file in any format, matrices as stored (packed or not)."""
    return _parsed_document(_text(raw, source), source)


def _parsed_document(text: str, source: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultFormatError(f"{source}: malformed JSON ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("metadata"), dict):
        raise ResultFormatError(f"{source}: not a result file (expected an object with metadata and data)")
    if not isinstance(document.get("data"), dict):
        raise ResultFormatError(f"{source}: not a result file (no data object)")
    return document


#: How `encode_result` ends a json-format file: the raw matrix, last, as rows of numbers.
_MATRIX_LAST = ',"association_matrix":[['


def load_document_and_matrix(raw: bytes, source: str = "result") -> tuple[dict[str, Any], np.ndarray | None]:
    """`load_document`, but a json-format file's matrix comes back apart, as float64, parsed by Arrow.

    Parsing a matrix's numbers as Python floats is most of the cost of reading a json-format file; a file laid
    out as `encode_result` writes it (``...,"association_matrix":[[...]]}}``) is read in under half the time.
    The document then has no ``association_matrix``. Any other file (compact, other writers, rows of unequal
    length, anything but numbers) is `load_document`'s, with None for the matrix.
    """
    text = _text(raw, source)
    cut = text.rfind(_MATRIX_LAST)
    if cut > 0 and text.endswith("]]}}"):
        matrix = _number_rows(text[cut + len(_MATRIX_LAST) - 2 : -2])
        if matrix is not None:
            try:
                document = _parsed_document(text[:cut] + "}}", source)
            except ResultFormatError:
                document = None
            # The cut object is the document's last member (the `}}` after it): it must be its data.
            if document is not None and list(document)[-1] == "data" and "association_matrix" not in document["data"]:
                return document, matrix
    return _parsed_document(text, source), None


def _number_rows(text: str) -> np.ndarray | None:
    """``[[1,2],[3,4]]`` as a float64 matrix; None for anything else (the JSON parser then has its say)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not text.startswith("[[") or not text.endswith("]]"):
        return None
    rows = pc.split_pattern(pa.array([text[2:-2]]), "],[").flatten()
    cells = pc.split_pattern(rows, ",")
    widths = pc.min_max(pc.list_value_length(cells)).as_py()
    if widths["min"] != widths["max"]:
        return None
    try:  # a cell that is not a number (a bracket, a quote, a space, an empty cell) fails the cast
        values = pc.cast(cells.flatten(), pa.float64())
    except pa.ArrowInvalid:
        return None
    matrix: np.ndarray = values.to_numpy(zero_copy_only=False).reshape(len(rows), widths["max"])
    return matrix


def read_metadata(raw: bytes, source: str = "result") -> dict[str, Any]:
    """A result file's metadata, without decoding its matrices where the layout allows (they are most of it).

    Files are written ``{"metadata":{...},"data":...}``, so only the head is decompressed and parsed.
    """
    head = '{"metadata":'
    try:
        if raw[:2] == GZIP_MAGIC:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            # Incremental: a character split between two chunks is decoded whole, never dropped.
            utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
            text, offset = "", 0
            while offset < len(raw) and not inflater.eof:
                text += utf8.decode(inflater.decompress(raw[offset : offset + 65536]))
                offset += 65536
                metadata = _metadata_from_head(text, head)
                if metadata is not None:
                    return metadata
        else:
            metadata = _metadata_from_head(raw.decode("utf-8", errors="replace"), head)
            if metadata is not None:
                return metadata
    except zlib.error as exc:
        raise ResultFormatError(f"{source}: not a TokenLens result file (zlib: {exc})") from None
    found: dict[str, Any] = load_document(raw, source)["metadata"]
    return found


def _metadata_from_head(text: str, head: str) -> dict[str, Any] | None:
    if not text.startswith(head):
        return None
    try:
        metadata, _end = json.JSONDecoder().raw_decode(text, len(head))
    except json.JSONDecodeError:
        return None
    return metadata if isinstance(metadata, dict) else None


def unpack_matrix(packed: dict[str, Any], source: str) -> np.ndarray:
    """The raw float32 matrix of `pack_matrix`'s output."""
    try:
        n_out, width = (int(n) for n in packed["shape"])
        n_in = int(packed["n_in"])
        peaks = np.frombuffer(base64.b64decode(packed["row_peaks"], validate=True), dtype="<f4")
        planes = np.frombuffer(zlib.decompress(base64.b64decode(packed["values"], validate=True)), dtype=np.uint8)
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise ResultFormatError(f"{source}: damaged compact matrix ({type(exc).__name__}: {exc})") from None
    counts = [n_in + i for i in range(n_out)]
    if peaks.shape != (n_out,) or planes.size != 2 * sum(counts) or n_in + n_out != width:
        raise ResultFormatError(f"{source}: damaged compact matrix (sizes do not match its shape {n_out}x{width})")
    visible = np.ascontiguousarray(planes.reshape(2, -1).T).view("<f2").ravel().astype(np.float32)
    matrix = np.zeros((n_out, width), dtype=np.float32)
    start = 0
    for i, count in enumerate(counts):
        matrix[i, :count] = visible[start : start + count] * peaks[i]
        start += count
    return matrix


def _seed_compressed(value: Any) -> bool:
    return isinstance(value, dict) and {"values", "indices", "shape"} <= set(value)


def _expand_seed_compressed(value: dict[str, Any], source: str) -> np.ndarray:
    """The seed UI's sparse form: ``indices[k] = row << 16 | column`` holds ``values[k]``."""
    try:
        rows, columns = (int(n) for n in value["shape"])
        indices = np.asarray(value["indices"], dtype=np.int64)
        values = np.asarray(value["values"], dtype=np.float64)
        matrix = np.zeros((rows, columns), dtype=np.float64)
        matrix[indices >> 16, indices & 0xFFFF] = values
    except (TypeError, ValueError, IndexError) as exc:
        raise ResultFormatError(f"{source}: damaged compressed matrix ({type(exc).__name__}: {exc})") from None
    return matrix


def _matrix(value: Any, source: str, name: str) -> np.ndarray:
    if isinstance(value, dict) and value.get("encoding") == PACKED_ENCODING:
        return unpack_matrix(value, source)
    if _seed_compressed(value):
        return _expand_seed_compressed(value, source)
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ResultFormatError(f"{source}: data.{name} is not a matrix of numbers (rows of equal length)") from None
    if matrix.ndim != 2:
        if matrix.size == 0:
            return matrix.reshape(0, 0)
        raise ResultFormatError(f"{source}: data.{name} is not a matrix (it has {matrix.ndim} dimensions)")
    return matrix


def _same_tokens(first: list[Any], second: list[Any]) -> bool:
    pairs = zip(first, second, strict=True)
    return all(isinstance(a, dict) and isinstance(b, dict) and a.get("token") == b.get("token") for a, b in pairs)


def _seed_layout(data: dict[str, Any], matrix: np.ndarray, source: str) -> np.ndarray:
    """A seed matrix in TokenLens layout: one row per output token, n_in + n_out columns, 0 from the diagonal on.

    Seed files may hold the matrix narrower (the extractor pads to n_in + n_out - 1), transposed (Inseq's
    positions x steps, 1.1.0), or with the prompt repeated in front of the output tokens (Inseq's target
    sequence of a decoder-only model); all become the TokenLens layout. Values the layout has no place for
    (a token's own column and later ones) are dropped: they are not attributions of earlier tokens.
    """
    inputs, outputs = data["input_tokens"], data["output_tokens"]
    n_in = len(inputs)
    from_inseq = data.get("attribution_source") in INSEQ_SOURCES
    if from_inseq and len(outputs) > n_in and _same_tokens(inputs, outputs[:n_in]):
        outputs = data["output_tokens"] = outputs[n_in:]
    n_out = len(outputs)
    width = n_in + n_out
    rows, columns = matrix.shape
    fits_rows = rows <= n_out and columns <= width
    fits_columns = columns <= n_out and rows <= width
    if fits_columns and (from_inseq or not fits_rows):
        matrix = matrix.T
    elif not fits_rows:
        raise ResultFormatError(
            f"{source}: data.association_matrix is {rows}x{columns}, which fits neither {n_out} output tokens "
            f"x {width} sources nor the transposed layout"
        )
    laid_out = np.zeros((n_out, width), dtype=np.float64)
    laid_out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return laid_out


def upgrade_document(document: dict[str, Any], source: str = "result") -> dict[str, Any]:
    """Any result document (TokenLens of any revision, compact or not, or a seed file) as the current format.

    Returns a new document whose ``association_matrix`` is a float matrix and without ``normalized_association``
    (the schema computes it). Raises `ResultFormatError` naming `source` for anything it can't read.
    """
    metadata = dict(document["metadata"])
    data = dict(document["data"])
    for name in ("input_tokens", "output_tokens"):
        if not isinstance(data.get(name), list):
            raise ResultFormatError(f"{source}: data.{name} must be a list of tokens")
    if "association_matrix" not in data:
        raise ResultFormatError(f"{source}: data.association_matrix is missing")
    matrix = _matrix(data["association_matrix"], source, "association_matrix")
    data.pop("normalized_association", None)
    revision = metadata.get("tokenlens_format")
    version = metadata.get("version")
    if revision is None and isinstance(version, str) and version.startswith("2."):
        # TokenLens 2.0 wrote its own revision as `version`, which the seed's validators refuse.
        metadata["tokenlens_format"], metadata["version"] = version, SEED_VERSIONS[-1]
    elif revision is None:
        # A seed file: its method is whatever it says, "unknown" where it says nothing (1.0.x).
        metadata["tokenlens_format"] = None
        metadata["attribution_method"] = metadata.get("attribution_method") or "unknown"
        data["attribution_source"] = data.get("attribution_source") or "unknown"
        matrix = _seed_layout(data, matrix, source)
        n_in = len(data["input_tokens"])
        for i in range(matrix.shape[0]):
            matrix[i, n_in + i :] = 0.0
    if not np.isfinite(matrix).all():
        raise ResultFormatError(f"{source}: data.association_matrix holds NaN or Infinity")
    metadata.setdefault("llm_version", llm_version_of(str(metadata.get("llm_id", ""))))
    # The schema rounds scores to float32: text of a float32's shortest form parses back to that float32.
    data["association_matrix"] = matrix.tolist()
    return {"metadata": metadata, "data": data}


def decode_result(raw: bytes, source: str = "result") -> AnalysisResult:
    """Any result file's bytes as an `AnalysisResult`; `ResultFormatError` naming `source` if it can't be read."""
    document = upgrade_document(load_document(raw, source), source)
    try:
        return AnalysisResult.model_validate(document)
    except ValueError as exc:  # pydantic's ValidationError: the first problem is enough for a person
        first = str(exc).splitlines()
        detail = " ".join(first[1:3]).strip() if len(first) > 1 else str(exc)
        raise ResultFormatError(f"{source}: not a valid TokenLens result ({detail})") from None


def current_format(raw: bytes) -> bool:
    """Whether `raw` is already a plain JSON file of the current revision (servable as it is)."""
    if raw[:2] == GZIP_MAGIC:
        return False
    try:
        metadata = read_metadata(raw)
    except ResultFormatError:
        return False
    return metadata.get("tokenlens_format") == TOKENLENS_FORMAT


def as_plain_json(raw: bytes, source: str = "result") -> bytes:
    """A stored result in any format as a plain JSON file of the current revision (what a download gives)."""
    if current_format(raw):
        return raw
    return encode_result(decode_result(raw, source), "json").body
