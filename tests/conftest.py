"""Shared fixtures: tiny random models built from configs, saved as ordinary model folders.

`invoke` runs the `evolve` command in-process (click's CliRunner) for CLI tests.

Nothing here touches a model hub. Tokenizers are trained in a second on a small corpus, and
models are tiny (1-2 layers, hidden 32), so loading them exercises the real `from_pretrained`
code path in scoring.models while keeping the suite fast. Tests that need the packaged real
models are marked `real`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CORPUS = [
    "Mozzarella is white so you can see it at night.",
    "Cheddar is yellow and tastes sharp when it is old.",
    "The quick brown fox jumps over the lazy dog.",
    "I went to the store to buy some milk and bread.",
    "The capital of France is Paris, a city on the Seine.",
    "Evolution keeps a population of texts and mutates them with a masked language model.",
    "A genetic algorithm selects the fittest individuals and recombines their spans.",
    "Unbelievably, the cheesemongers were reorganising their warehouses yesterday.",
] * 4


def _train_wordpiece(folder: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # A small vocabulary forces long words into several subword pieces (word_l2r needs them).
    tok.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=180, special_tokens=specials)
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )
    fast.save_pretrained(folder)


def _train_bytelevel(folder: Path, roberta: bool, extra: tuple[str, ...] = ()) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if roberta else ["<|endoftext|>"]
    specials += list(extra)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    if roberta:
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            sep_token="</s>",
            cls_token="<s>",
            unk_token="<unk>",
            pad_token="<pad>",
            mask_token="<mask>",
            model_max_length=64,
        )
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            additional_special_tokens=list(extra) or None,
            model_max_length=64,
        )
    fast.save_pretrained(folder)


def _save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT MLM (hidden 32) with a trained WordPiece tokenizer, as a local folder."""
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-bert")
    _train_wordpiece(folder)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=180,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return _save(BertForMaskedLM(cfg).eval(), folder)


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer RoBERTa MLM with a byte-level BPE tokenizer (pad id 1, offset positions)."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-roberta")
    _train_bytelevel(folder, roberta=True)
    torch.manual_seed(1)
    cfg = RobertaConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
    )
    return _save(RobertaForMaskedLM(cfg).eval(), folder)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer GPT-2 causal LM with a byte-level BPE tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    _train_bytelevel(folder, roberta=False)
    torch.manual_seed(2)
    cfg = GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=2, n_positions=128)
    return _save(GPT2LMHeadModel(cfg).eval(), folder)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama causal LM (SmolLM2's architecture, hidden 32) whose byte-level BPE
    tokenizer has SmolLM2's start and mask tokens (`<|endoftext|>`, `<filename>`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    _train_bytelevel(folder, roberta=False, extra=("<filename>",))
    torch.manual_seed(3)
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return _save(LlamaForCausalLM(cfg).eval(), folder)


def make_decoder_mlm(base_dir: Path, folder: Path, seed: int = 4, attention: str = "full") -> Path:
    """A decoder-MLM adapter folder on ``base_dir``: LoRA layers with random weights (PEFT
    starts B at zero, which would make the adapter a no-op) and its ``decoder_mlm.json``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from scoring.decoder_mlm import DecoderMLMSpec

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    model.save_pretrained(str(folder))
    DecoderMLMSpec(base=str(base_dir), attention=attention).write(folder)  # type: ignore[arg-type]
    return folder


@pytest.fixture(scope="session")
def tiny_decoder_mlm_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama made a masked LM by a random LoRA adapter (full attention)."""
    return make_decoder_mlm(tiny_llama_dir, tmp_path_factory.mktemp("tiny-decoder-mlm"))


@pytest.fixture(scope="session")
def tiny_decoder_mlm_prefix_dir(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The same adapter, scoring with prefix attention."""
    return make_decoder_mlm(
        tiny_llama_dir, tmp_path_factory.mktemp("tiny-decoder-mlm-prefix"), attention="prefix"
    )


@pytest.fixture
def cli_runner() -> CliRunner:
    """A fresh runner per test; click keeps stdout and stderr apart (`result.stderr`)."""
    return CliRunner()


@pytest.fixture
def invoke(cli_runner: CliRunner) -> Callable[..., Result]:
    """`invoke("run", "--prompt", ...)` runs `evolve run --prompt ...` in-process through
    the real command group (cli.main.cli), error translation included."""
    from cli.main import cli

    def run(*args: str | Path, **kwargs: Any) -> Result:
        return cli_runner.invoke(cli, [str(a) for a in args], **kwargs)

    return run
