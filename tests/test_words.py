"""Word starts for WordPiece, byte-level BPE and SentencePiece tokenizers (scoring.words)."""

from __future__ import annotations

import pytest

from scoring.models import load_causal, load_model
from scoring.words import detect_scheme, word_starts

PLAIN = "Unbelievably the cheesemongers were reorganising their warehouses yesterday"


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _words_of(tok, text: str) -> list[str]:
    """Each word (a word start and the tokens up to the next) decoded on its own, stripped."""
    ids = _ids(tok, text)
    bounds = [i for i, s in enumerate(word_starts(tok, ids)) if s] + [len(ids)]
    return [tok.decode(ids[a:b]).strip() for a, b in zip(bounds, bounds[1:], strict=False)]


@pytest.fixture(scope="module")
def sentencepiece_tok():
    """A tiny Unigram tokenizer with the Metaspace (▁) pre-tokenizer, as ALBERT/XLM-R use."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        [PLAIN, "The (cheese)mongers, yesterday!", "the cheese and the mongers"] * 4,
        trainers.UnigramTrainer(
            vocab_size=120, special_tokens=["<pad>", "<unk>", "[MASK]"], unk_token="<unk>"
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", mask_token="[MASK]"
    )


def test_schemes_are_detected(tiny_bert_dir, tiny_roberta_dir, tiny_gpt2_dir, sentencepiece_tok):
    assert detect_scheme(load_model(str(tiny_bert_dir), "mlm").tokenizer) == "wordpiece"
    assert detect_scheme(load_model(str(tiny_roberta_dir), "mlm").tokenizer) == "bytelevel"
    assert detect_scheme(load_model(str(tiny_gpt2_dir), "causal").tokenizer) == "bytelevel"
    assert detect_scheme(sentencepiece_tok) == "sentencepiece"


def test_wordpiece_follows_hash_marks(tiny_bert_dir):
    tok = load_model(str(tiny_bert_dir), "mlm").tokenizer
    ids = _ids(tok, PLAIN)
    tokens = tok.convert_ids_to_tokens(ids)
    assert any(t.startswith("##") for t in tokens)  # the small vocabulary splits long words
    assert word_starts(tok, ids) == [not t.startswith("##") for t in tokens]


@pytest.mark.parametrize("which", ["bert", "roberta", "gpt2", "sentencepiece"])
def test_words_match_whitespace_words(
    which, tiny_bert_dir, tiny_roberta_dir, tiny_gpt2_dir, sentencepiece_tok
):
    tok = {
        "bert": lambda: load_model(str(tiny_bert_dir), "mlm").tokenizer,
        "roberta": lambda: load_model(str(tiny_roberta_dir), "mlm").tokenizer,
        "gpt2": lambda: load_model(str(tiny_gpt2_dir), "causal").tokenizer,
        "sentencepiece": lambda: sentencepiece_tok,
    }[which]()
    assert len(_ids(tok, PLAIN)) > len(PLAIN.split())  # several words have several pieces
    words = _words_of(tok, PLAIN)
    expected = PLAIN.lower().split() if which == "bert" else PLAIN.split()
    assert words == expected


@pytest.mark.parametrize("which", ["roberta", "sentencepiece"])
def test_punctuation_begins_words(which, tiny_roberta_dir, sentencepiece_tok):
    tok = (
        load_model(str(tiny_roberta_dir), "mlm").tokenizer
        if which == "roberta"
        else sentencepiece_tok
    )
    words = _words_of(tok, "The (cheese)mongers, yesterday!")
    assert words == ["The", "(", "cheese", ")", "mongers", ",", "yesterday", "!"]


def test_first_and_special_tokens_begin_words(tiny_roberta_dir):
    tok = load_model(str(tiny_roberta_dir), "mlm").tokenizer
    ids = _ids(tok, "cheesemongers")
    assert len(ids) > 1
    assert word_starts(tok, ids) == [True] + [False] * (len(ids) - 1)
    with_specials = [tok.cls_token_id, *ids, tok.sep_token_id]
    assert word_starts(tok, with_specials) == [True, True] + [False] * (len(ids) - 1) + [True]
    assert word_starts(tok, []) == []


@pytest.mark.real
def test_smollm2_tokenizer_words():
    tok = load_causal().tokenizer
    text = "Unbelievably, the cheesemongers weren't reorganising (their) warehouses!\nNew line"
    assert _words_of(tok, text) == [
        "Unbelievably",
        ",",
        "the",
        "cheesemongers",
        "weren't",
        "reorganising",
        "(",
        "their",
        ")",
        "warehouses",
        "!",
        "New",  # "\nNew": a newline token begins the word that follows it
        "line",
    ]
