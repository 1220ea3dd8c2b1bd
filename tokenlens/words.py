"""Words and sentences: group a result's tokens by their character spans, and aggregate scores over the groups.

Tokens are grouped from the tokenizer's own character offsets, never by guessing at a vocabulary's word
markers (``Ġ``, ``▁``, ``##``), so the same rule holds for byte-level BPE, SentencePiece and WordPiece:

- Each token carries ``span = [start, end]``: characters of the prompt text (``metadata.prompt``, input tokens)
  or of the generated text (``metadata.generated_text``, output tokens). Template and special tokens outside
  the user's prompt have no span. A token whose bytes end inside a character (byte-level BPE splits UTF-8)
  has an empty span; the token that completes the character holds it.
- A **word** is a run of letters and digits (with inner apostrophes: ``don't``), or a run of punctuation.
  A token belongs to the word holding its first non-space character; a token that is only whitespace
  (``"\\n\\n"``) is a group of its own, an empty-span token joins the next token's group.
- A **sentence** ends after ``.``, ``!`` or ``?`` followed by whitespace or the end of the text, or at a line
  break. A whitespace-only token joins the sentence before it.
- A template or special token is a word of its own; a run of them is one sentence-level group.

Files written before spans existed (and seed files) fall back to a tokenizer-free rule: the text is the
concatenation of the tokens' ``clean_token`` strings, and each token's span is its piece of that text; a
token whose vocabulary string starts with SentencePiece's ``▁`` but whose ``clean_token`` has no leading
space gets one (SentencePiece's single-token decode drops it). A byte-level token holding part of a
character decodes to U+FFFD, which the rule counts as a letter, so the word stays whole (its text shows
U+FFFD where the character was).

`annotate_groups` writes each token's ``word`` and ``sentence`` index into the result (what the UI's toggle
groups by); `aggregate` turns a result's token matrix into a word or sentence matrix:

- ``sum`` (default): a group's score is the sum of its tokens' scores, over sources (columns) and over the
  output tokens of a generated word (rows): the total attribution, so groups add up to the token matrix.
- ``max``: the score of largest magnitude, sign kept: the strongest single token in the group.

The normalised matrix is each grouped row over its largest absolute value, as for tokens. A grouped row may
be non-zero in its own word's column (a later token of a word depends on the word's earlier tokens).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenlens.errors import TokenLensError
from tokenlens.schema import AnalysisResult, TokenInfo, normalize_rows

LEVELS = ("token", "word", "sentence")
AGGREGATIONS = ("sum", "max")
#: SentencePiece's word-start marker, used only by the fallback rule for files without spans.
SENTENCEPIECE_MARK = "\u2581"

Span = tuple[int, int]
#: U+FFFD counts as a letter: in the fallback rule it stands for a byte-level token's piece of a character.
_WORD = re.compile(r"[\w\ufffd]+(?:['\u2019][\w\ufffd]+)*|[^\w\s\ufffd]+")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|\n")


class GroupingError(TokenLensError):
    """An unknown level or aggregation: the message lists the valid ones."""


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise GroupingError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
    return level


def check_aggregation(how: str) -> str:
    if how not in AGGREGATIONS:
        raise GroupingError(f"unknown aggregation {how!r}; use one of {', '.join(AGGREGATIONS)}")
    return how


@dataclass(frozen=True)
class TokenGroup:
    """One word or sentence: its text and the indices of its tokens in their sequence (inputs or outputs)."""

    text: str
    tokens: tuple[int, ...]
    is_template: bool = False


# --- spans, at write time (tokenizer in hand) ------------------------------------------------------------------


def input_spans(
    offsets: Sequence[Span] | None, template_mask: Sequence[bool], prompt_start: int, prompt_len: int
) -> list[Span | None]:
    """Input tokens' spans in the user's prompt, from offsets in the rendered text where the prompt starts at
    `prompt_start`; None for template tokens and where the tokenizer gives no offsets."""
    if offsets is None or prompt_start < 0:
        return [None] * len(template_mask)
    spans: list[Span | None] = []
    for (start, end), template in zip(offsets, template_mask, strict=True):
        if template:
            spans.append(None)
            continue
        low = min(max(start - prompt_start, 0), prompt_len)
        spans.append((low, min(max(end - prompt_start, low), prompt_len)))
    return spans


def decoded_spans(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[Span]]:
    """The text `ids` decode to (special tokens kept) and each token's span in it.

    Decoding the growing prefix and keeping what agrees with the whole text: a prefix that ends inside a
    UTF-8 character decodes to a replacement character, so that token's span stays empty until a later
    token completes the character.
    """
    text = str(tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))
    spans, end = [], 0
    for count in range(1, len(ids) + 1):
        prefix = str(tokenizer.decode(list(ids[:count]), skip_special_tokens=False, clean_up_tokenization_spaces=False))
        agree = _common_prefix(prefix, text)
        start, end = end, max(end, agree)
        spans.append((start, end))
    return text, spans


def _common_prefix(first: str, second: str) -> int:
    limit = min(len(first), len(second))
    if first[:limit] == second[:limit]:
        return limit
    low, high = 0, limit
    while low < high:  # binary search on the agreeing prefix length
        middle = (low + high + 1) // 2
        if first[:middle] == second[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


# --- grouping ---------------------------------------------------------------------------------------------------


def fallback_text_and_spans(tokens: Sequence[TokenInfo]) -> tuple[str, list[Span]]:
    """The tokenizer-free rule for files without spans (see the module docstring)."""
    pieces, spans, position = [], [], 0
    for token in tokens:
        piece = token.clean_token
        if token.token.startswith(SENTENCEPIECE_MARK) and not piece[:1].isspace():
            piece = " " + piece
        pieces.append(piece)
        spans.append((position, position + len(piece)))
        position += len(piece)
    return "".join(pieces), spans


def sequence_text_and_spans(tokens: Sequence[TokenInfo], text: str | None) -> tuple[str, list[Span | None]]:
    """The text and spans to group `tokens` by: their stored spans in `text`, else the fallback rule."""
    stored: list[Span | None] = []
    for token in tokens:
        span = getattr(token, "span", None)
        stored.append((int(span[0]), int(span[1])) if isinstance(span, list | tuple) and len(span) == 2 else None)
    usable = text is not None and all(
        span is not None and 0 <= span[0] <= span[1] <= len(text)
        for span, token in zip(stored, tokens, strict=True)
        if not token.is_template
    )
    if usable and text is not None and any(span is not None for span in stored):
        return text, stored
    fallback_text, spans = fallback_text_and_spans(tokens)
    return fallback_text, [None if token.is_template else span for token, span in zip(tokens, spans, strict=True)]


def _unit_starts(text: str, level: str) -> list[int]:
    """Where each word or sentence starts in `text` (sorted), for lookup by a character's position."""
    if level == "word":
        return [match.start() for match in _WORD.finditer(text)]
    starts = [0]
    for match in _SENTENCE_END.finditer(text):
        starts.append(match.end())
    return starts


def group_tokens(tokens: Sequence[TokenInfo], text: str | None, level: str) -> list[TokenGroup]:
    """`tokens` grouped into words or sentences (`level`), in order; every token is in exactly one group."""
    check_level(level)
    if level == "token":
        return [TokenGroup(t.clean_token, (index,), t.is_template) for index, t in enumerate(tokens)]
    full_text, spans = sequence_text_and_spans(tokens, text)
    starts = _unit_starts(full_text, level)
    # Each token gets a key: tokens with equal consecutive keys form one group.
    keys: list[tuple[str, int] | None] = []
    for index, (token, span) in enumerate(zip(tokens, spans, strict=True)):
        if token.is_template or span is None:
            keys.append(("template", index) if level == "word" else ("template", -1))
            continue
        piece = full_text[span[0] : span[1]]
        stripped = len(piece) - len(piece.lstrip())
        if not piece:
            keys.append(None)  # decided below: the next token's group
        elif stripped == len(piece):
            keys.append(("space", index) if level == "word" else None)
        else:
            anchor = span[0] + stripped
            keys.append(("unit", bisect.bisect_right(starts, anchor) - 1))
    _fill_open_keys(keys, prefer_next=level == "word")
    groups: list[TokenGroup] = []
    members: list[int] = []
    for index, key in enumerate(keys):
        members.append(index)
        if index + 1 == len(keys) or keys[index + 1] != key:
            groups.append(_make_group(tokens, full_text, spans, members))
            members = []
    return groups


def _fill_open_keys(keys: list[tuple[str, int] | None], *, prefer_next: bool) -> None:
    """Give tokens without a key of their own (empty spans; whitespace in sentences) a neighbour's key."""
    for index in range(len(keys)):
        if keys[index] is not None:
            continue
        before = next((keys[j] for j in range(index - 1, -1, -1) if keys[j] is not None), None)
        after = next((keys[j] for j in range(index + 1, len(keys)) if keys[j] is not None), None)
        chosen = (after or before) if prefer_next else (before or after)
        keys[index] = chosen or ("alone", index)


def _make_group(tokens: Sequence[TokenInfo], text: str, spans: Sequence[Span | None], members: list[int]) -> TokenGroup:
    template = all(tokens[i].is_template for i in members)
    located = [spans[i] for i in members if spans[i] is not None and not tokens[i].is_template]
    if located and not template:
        label = text[min(s[0] for s in located if s) : max(s[1] for s in located if s)]
    else:
        label = "".join(tokens[i].clean_token for i in members)
    return TokenGroup(label, tuple(members), template)


def result_groups(result: AnalysisResult, level: str) -> tuple[list[TokenGroup], list[TokenGroup]]:
    """The input and output groups of a result at `level`."""
    metadata, data = result.metadata, result.data
    generated = getattr(metadata, "generated_text", None)
    return (
        group_tokens(data.input_tokens, metadata.prompt, level),
        group_tokens(data.output_tokens, generated if isinstance(generated, str) else None, level),
    )


def annotate_groups(result: AnalysisResult) -> AnalysisResult:
    """Write each token's ``word`` and ``sentence`` index (within its sequence) into `result`, and return it."""
    for level in ("word", "sentence"):
        for tokens, groups in zip(
            (result.data.input_tokens, result.data.output_tokens), result_groups(result, level), strict=True
        ):
            for group_index, group in enumerate(groups):
                for token_index in group.tokens:
                    setattr(tokens[token_index], level, group_index)
    return result


# --- aggregation ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupedAttribution:
    """A result's matrix at one level: rows are output groups, columns input groups then output groups."""

    level: str
    aggregation: str
    input_groups: list[TokenGroup]
    output_groups: list[TokenGroup]
    matrix: np.ndarray
    normalized: np.ndarray


def _reduce(values: np.ndarray, members: Sequence[Sequence[int]], axis: int, how: str) -> np.ndarray:
    parts = []
    for indices in members:
        block = np.take(values, list(indices), axis=axis)
        if how == "sum":
            parts.append(block.sum(axis=axis))
        else:
            strongest = np.abs(block).argmax(axis=axis)
            parts.append(np.take_along_axis(block, np.expand_dims(strongest, axis), axis=axis).squeeze(axis))
    if not parts:
        shape = list(values.shape)
        shape[axis] = 0
        return np.zeros(shape, dtype=values.dtype)
    return np.stack(parts, axis=axis)


def aggregate(result: AnalysisResult, level: str = "word", how: str = "sum") -> GroupedAttribution:
    """The result's raw matrix grouped at `level` with `how` ("sum" or "max", see the module docstring)."""
    check_aggregation(how)
    input_groups, output_groups = result_groups(result, level)
    n_in = len(result.data.input_tokens)
    matrix = np.asarray(result.data.association_matrix, dtype=np.float64).reshape(
        len(result.data.output_tokens), n_in + len(result.data.output_tokens)
    )
    columns = [group.tokens for group in input_groups] + [
        tuple(n_in + i for i in group.tokens) for group in output_groups
    ]
    by_column = _reduce(matrix, columns, axis=1, how=how)
    grouped = _reduce(by_column, [group.tokens for group in output_groups], axis=0, how=how)
    normalized = np.asarray(normalize_rows(grouped.tolist()), dtype=np.float64).reshape(grouped.shape)
    return GroupedAttribution(level, how, input_groups, output_groups, grouped, normalized)
