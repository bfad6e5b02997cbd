"""Loading models by folder, preset and bad names (scoring.models)."""

from __future__ import annotations

import pytest

from scoring.models import ModelLoadError, load_model


def test_load_tiny_folders(tiny_bert_dir, tiny_roberta_dir, tiny_gpt2_dir):
    bert = load_model(str(tiny_bert_dir), "mlm")
    assert bert.tokenizer.mask_token == "[MASK]"
    assert bert.max_length == 64
    rob = load_model(str(tiny_roberta_dir), "mlm")
    assert rob.max_length == 64  # 66 positions minus RoBERTa's padding offset
    gpt = load_model(str(tiny_gpt2_dir), "causal")
    assert gpt.tokenizer.pad_token_id is not None
    assert load_model(str(tiny_bert_dir), "mlm") is bert  # cached per process


def test_kind_mismatch_is_refused(tiny_bert_dir, tiny_gpt2_dir):
    with pytest.raises(ModelLoadError, match="masked LM"):
        load_model(str(tiny_gpt2_dir), "mlm")
    with pytest.raises(ModelLoadError, match="not a causal LM"):
        load_model(str(tiny_bert_dir), "causal")
    with pytest.raises(ModelLoadError, match="not a masked LM"):
        load_model("smollm2-135m", "mlm")


def test_bad_names(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path), "mlm")
    with pytest.raises(ModelLoadError, match="Presets: tiny-bert"):
        load_model("no-such-org/no-such-model", "mlm")
    with pytest.raises(ModelLoadError, match="empty"):
        load_model("  ", "mlm")
