"""Words and sentences from character spans, on three tokenizers with different word markers.

SmolLM2's byte-level BPE (``Ġ``, the bundled GGUF), a GPT-2-style byte-level BPE trained here, and a
SentencePiece-style Unigram (``▁``, Metaspace) trained here: the same text gives the same words and
sentences on all three, from offsets alone, and files without spans fall back to the documented rule.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from tokenlens.schema import AnalysisData, AnalysisMetadata, AnalysisResult, TokenInfo
from tokenlens.tokenization import encode_text
from tokenlens.words import (
    GroupingError,
    aggregate,
    annotate_groups,
    decoded_spans,
    group_tokens,
    input_spans,
)

TEXT = "Hello, wörld! Tokenizers split unbelievably long words.\nDon't they? Café au lait 🙂 costs 3.50"
#: The words of TEXT under the documented rule, written out by hand.
WORDS = [
    "Hello", ",", "wörld", "!", "Tokenizers", "split", "unbelievably", "long", "words", ".",
    "Don't", "they", "?", "Café", "au", "lait", "🙂", "costs", "3", ".", "50",
]  # fmt: skip
SENTENCES = [
    "Hello, wörld!",
    "Tokenizers split unbelievably long words.",
    "Don't they?",
    "Café au lait 🙂 costs 3.50",
]
CORPUS = [TEXT, "the quick brown fox jumps over the lazy dog", "words split into pieces and pieces into words"] * 20


def _fast(model: Any, pre_tokenizer: Any, decoder: Any, trainer: Any) -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoder
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")  # type: ignore[no-untyped-call]


def gpt2_style() -> Any:
    """A GPT-2 byte-level BPE (Ġ marks a space), trained on a few sentences: no hub."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    return _fast(
        models.BPE(),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        decoders.ByteLevel(),
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )


def sentencepiece_style() -> Any:
    """A SentencePiece Unigram (▁ marks a word start, Metaspace), trained on a few sentences."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    return _fast(
        models.Unigram(),
        pre_tokenizers.Metaspace(),
        decoders.Metaspace(),
        trainers.UnigramTrainer(vocab_size=120, special_tokens=["<s>", "</s>", "<unk>"], unk_token="<unk>"),
    )


def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from tokenlens.models import _alias_gguf_path

    gguf = _alias_gguf_path("smollm2-135m-instruct")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


TOKENIZERS = {"smollm2": smollm2_tokenizer, "gpt2": gpt2_style, "sentencepiece": sentencepiece_style}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request: pytest.FixtureRequest) -> Any:
    return TOKENIZERS[request.param]()


def input_tokens(tokenizer: Any, text: str, *, with_spans: bool = True) -> list[TokenInfo]:
    ids, offsets = encode_text(tokenizer, text)
    special = set(tokenizer.all_special_ids)
    mask = [token_id in special for token_id in ids]
    spans = input_spans(offsets, mask, 0, len(text))
    tokens = []
    for token_id, template, span in zip(ids, mask, spans, strict=True):
        tokens.append(
            TokenInfo(
                token=tokenizer.convert_ids_to_tokens(token_id),
                token_id=token_id,
                clean_token=tokenizer.decode([token_id]),
                is_template=template,
                span=list(span) if span is not None and with_spans else None,
            )
        )
    return tokens


def output_tokens(tokenizer: Any, text: str) -> tuple[str, list[TokenInfo]]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    generated, spans = decoded_spans(tokenizer, ids)
    tokens = [
        TokenInfo(
            token=tokenizer.convert_ids_to_tokens(token_id),
            token_id=token_id,
            clean_token=tokenizer.decode([token_id]),
            span=list(span),
        )
        for token_id, span in zip(ids, spans, strict=True)
    ]
    return generated, tokens


def labels(groups: list[Any]) -> list[str]:
    return [group.text.strip() for group in groups if group.text.strip() and not group.is_template]


def test_input_words_and_sentences_come_from_offsets(tokenizer: Any) -> None:
    tokens = input_tokens(tokenizer, TEXT)
    assert len(tokens) > len(WORDS)  # real sub-word splitting is being grouped, not one token per word
    assert labels(group_tokens(tokens, TEXT, "word")) == WORDS
    assert labels(group_tokens(tokens, TEXT, "sentence")) == SENTENCES
    groups = group_tokens(tokens, TEXT, "word")
    assert sorted(i for group in groups for i in group.tokens) == list(range(len(tokens)))


def test_output_words_from_decoded_spans(tokenizer: Any) -> None:
    generated, tokens = output_tokens(tokenizer, TEXT)
    assert generated.strip() == TEXT
    assert "".join(generated[t.span[0] : t.span[1]] for t in tokens if t.span) == generated
    assert labels(group_tokens(tokens, generated, "word")) == WORDS
    assert labels(group_tokens(tokens, generated, "sentence")) == SENTENCES


def test_files_without_spans_fall_back_to_token_text(tokenizer: Any) -> None:
    tokens = input_tokens(tokenizer, TEXT, with_spans=False)
    # A byte-level token holding part of a character decodes (alone) to U+FFFD: same words, that text lost.
    assert_same_up_to_lost_characters(labels(group_tokens(tokens, None, "word")), WORDS)
    assert_same_up_to_lost_characters(labels(group_tokens(tokens, None, "sentence")), SENTENCES)


def assert_same_up_to_lost_characters(found: list[str], expected: list[str]) -> None:
    assert len(found) == len(expected), found
    for got, want in zip(found, expected, strict=True):
        if "\ufffd" in got:
            pattern = "".join(
                ".{1,4}" if char == "\ufffd" else re.escape(char) for char in re.sub("\ufffd+", "\ufffd", got)
            )
            assert re.fullmatch(pattern, want), (got, want)
        else:
            assert got == want


def test_byte_level_split_characters_join_the_token_that_completes_them() -> None:
    tokenizer = gpt2_style()
    generated, tokens = output_tokens(tokenizer, " 🙂 ok")
    # The emoji is four UTF-8 bytes; the byte-level vocabulary trained here splits it into several tokens.
    assert any(t.span and t.span[0] == t.span[1] for t in tokens)
    groups = group_tokens(tokens, generated, "word")
    assert labels(groups) == ["🙂", "ok"]


def _result(tokenizer: Any, prompt: str, generated_text: str) -> AnalysisResult:
    inputs = input_tokens(tokenizer, prompt)
    generated, outputs = output_tokens(tokenizer, generated_text)
    n_in, n_out = len(inputs), len(outputs)
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(n_out, n_in + n_out))
    for i in range(n_out):
        matrix[i, n_in + i :] = 0.0
    metadata = AnalysisMetadata(llm_id="test/tiny", prompt=prompt, generated_text=generated)
    data = AnalysisData(input_tokens=inputs, output_tokens=outputs, association_matrix=matrix.tolist())
    return AnalysisResult(metadata=metadata, data=data)


def test_sum_aggregation_keeps_totals_and_max_keeps_the_strongest_token() -> None:
    tokenizer = gpt2_style()
    result = _result(tokenizer, "Tokenizers split unbelievably.", " Pieces and words.")
    tokens = np.asarray(result.data.association_matrix)
    summed = aggregate(result, "word", "sum")
    assert summed.matrix.shape == (len(summed.output_groups), len(summed.input_groups) + len(summed.output_groups))
    assert summed.matrix.shape[1] < tokens.shape[1]
    assert np.isclose(summed.matrix.sum(), tokens.sum())
    word = next(g for g in summed.input_groups if g.text.strip() == "unbelievably")
    column = summed.input_groups.index(word)
    rows_first_word = summed.output_groups[0].tokens
    expected = tokens[np.ix_(list(rows_first_word), list(word.tokens))].sum()
    assert np.isclose(summed.matrix[0, column], expected)
    strongest = aggregate(result, "word", "max")
    block = tokens[np.ix_(list(rows_first_word), list(word.tokens))]
    assert np.isclose(strongest.matrix[0, column], block.flat[np.abs(block).argmax()])
    assert np.allclose(np.abs(strongest.normalized).max(axis=1), 1.0)
    assert aggregate(result, "token").matrix.shape == tokens.shape


def test_annotated_ids_match_groups_and_survive_the_file() -> None:
    tokenizer = gpt2_style()
    result = annotate_groups(_result(tokenizer, "Hello, wörld! Bye.", " Pieces and words."))
    again = AnalysisResult.from_json_bytes(result.to_json_bytes())
    groups = group_tokens(again.data.input_tokens, again.metadata.prompt, "word")
    expected = [index for index, group in enumerate(groups) for _token in group.tokens]
    assert [t.word for t in again.data.input_tokens] == expected
    assert labels(groups) == ["Hello", ",", "wörld", "!", "Bye", "."]
    assert [t.sentence for t in again.data.output_tokens][-1] == 0
    assert {t.sentence for t in again.data.input_tokens} == {0, 1}


def test_unknown_level_or_aggregation_names_the_choices() -> None:
    tokenizer = gpt2_style()
    result = _result(tokenizer, "Hi there.", " Yes.")
    with pytest.raises(GroupingError, match="token, word, sentence"):
        aggregate(result, "paragraph")
    with pytest.raises(GroupingError, match="sum, max"):
        aggregate(result, "word", "mean")


def test_seed_files_group_by_the_fallback_rule() -> None:
    from pathlib import Path

    raw = (Path(__file__).parent.parent / "fixtures/seed_files/v1_0_0_gradient.json").read_bytes()
    result = AnalysisResult.from_json_bytes(raw)
    words = group_tokens(result.data.input_tokens, result.metadata.prompt, "word")
    text = "".join(t.clean_token for t in result.data.input_tokens if not t.is_template)
    assert labels(words) == re.findall(r"\w+(?:'\w+)*|[^\w\s]+", text)
