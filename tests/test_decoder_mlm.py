"""The decoder masked LM (scoring.decoder_mlm) on a tiny random Llama with a LoRA adapter:
the shift, bidirectionality, prefix attention against full recomputation, adapter loading
offline, and the GA running on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scoring.decoder_mlm import (
    MASK_TOKEN,
    START_TOKEN,
    DecoderMLM,
    attention_mask_4d,
)
from scoring.errors import ModelLoadError
from scoring.models import check_kind, load_fresh, load_mlm
from scoring.pll import PLLScorer, naive_pll
from scoring.template import special_template

CONT = " cheddar is yellow and tastes sharp"
PROMPT = "Mozzarella is white so"


def _ids(lm, text: str) -> list[int]:
    return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def _direct_logprobs(
    model: DecoderMLM, mask_id: int, seq: list[int], scored: range, prompt_len: int = 0
) -> list[float]:
    """Each scored position masked in turn, the decoder run on the whole sequence with an
    explicit 4D mask, the head applied to the hidden state one position before."""
    out = []
    for j in scored:
        ids = torch.tensor([seq])
        ids[0, j] = mask_id
        keep = torch.ones_like(ids, dtype=torch.bool)
        prompt = None
        if prompt_len:
            prompt = torch.zeros_like(keep)
            prompt[0, :prompt_len] = True
        with torch.inference_mode():
            hidden = model.body.decoder(
                input_ids=ids, attention_mask=attention_mask_4d(keep, prompt=prompt)
            ).last_hidden_state
            logp = torch.log_softmax(model.lm_head(hidden[0, j - 1]).float(), dim=-1)
        out.append(float(logp[seq[j]]))
    return out


@pytest.fixture
def dmlm(tiny_decoder_mlm_dir: Path):
    return load_mlm(str(tiny_decoder_mlm_dir))


def test_tokenizer_has_mask_and_start_template(dmlm) -> None:
    tok = dmlm.tokenizer
    assert tok.mask_token == MASK_TOKEN
    assert tok.mask_token_id == tok.convert_tokens_to_ids(MASK_TOKEN)
    head, tail = special_template(tok)
    assert head == (tok.convert_tokens_to_ids(START_TOKEN),)
    assert tail == ()
    assert dmlm.kind == "mlm"


def test_shift_pll_equals_direct_computation(dmlm) -> None:
    cont = _ids(dmlm, CONT)
    start = dmlm.tokenizer.convert_tokens_to_ids(START_TOKEN)
    mask = dmlm.tokenizer.mask_token_id
    want = _direct_logprobs(dmlm.model, mask, [start, *cont], range(1, len(cont) + 1))
    got = PLLScorer(dmlm).score_ids([cont])[0].token_logprobs
    assert len(got) == len(cont)
    assert got == pytest.approx(want, abs=1e-5)
    naive = naive_pll(dmlm, [cont])[0].token_logprobs
    assert naive == pytest.approx(want, abs=1e-5)


def test_prediction_uses_the_right_context(dmlm) -> None:
    """Changing a token to the right of the masked one changes its prediction."""
    start = dmlm.tokenizer.convert_tokens_to_ids(START_TOKEN)
    mask = dmlm.tokenizer.mask_token_id
    cont = _ids(dmlm, CONT)
    a = torch.tensor([[start, cont[0], mask, *cont[2:]]])
    b = a.clone()
    b[0, -1] = cont[1]  # a different last token, far right of the mask
    with torch.inference_mode():
        la = dmlm.model(input_ids=a).logits[0, 2]
        lb = dmlm.model(input_ids=b).logits[0, 2]
    assert (la - lb).abs().max() > 1e-3
    # ... while the base causal LM's next-token logits at the same place cannot see it
    base = json.loads((Path(dmlm.source) / "decoder_mlm.json").read_text())["base"]
    causal = load_fresh(base, "causal")
    with torch.inference_mode():
        ca = causal.model(input_ids=a).logits[0, 1]
        cb = causal.model(input_ids=b).logits[0, 1]
    assert torch.allclose(ca, cb)


def test_padded_batches_score_as_single_texts(dmlm) -> None:
    texts = [CONT, " white", " so you can see it at night and in the day too"]
    conts = [_ids(dmlm, t) for t in texts]
    prefix = _ids(dmlm, PROMPT)
    together = PLLScorer(dmlm, tokens_per_batch=64).score_ids(conts, prefix)
    for cont, scores in zip(conts, together, strict=True):
        alone = PLLScorer(dmlm).score_ids([cont], prefix)[0]
        assert scores.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-5)


def test_prefix_attention_equals_full_recomputation(tiny_decoder_mlm_prefix_dir: Path) -> None:
    lm = load_mlm(str(tiny_decoder_mlm_prefix_dir))
    assert lm.model.attention == "prefix"
    start = lm.tokenizer.convert_tokens_to_ids(START_TOKEN)
    prefix = _ids(lm, PROMPT)
    conts = [_ids(lm, t) for t in (CONT, " white and soft", " yes")]
    scorer = PLLScorer(lm, tokens_per_batch=48)  # several batches after one prompt pass
    got = scorer.score_ids(conts, prefix)
    for cont, scores in zip(conts, got, strict=True):
        seq = [start, *prefix, *cont]
        p = 1 + len(prefix)
        mask = lm.tokenizer.mask_token_id
        want = _direct_logprobs(lm.model, mask, seq, range(p, len(seq)), prompt_len=p)
        assert scores.token_logprobs == pytest.approx(want, abs=1e-5)
    # the prompt ran once for all of them, and a second call reuses it
    assert len(lm.model._prompts) == 1
    scorer.clear_cache()
    again = scorer.score_ids(conts, prefix)
    assert [s.total for s in again] == pytest.approx([s.total for s in got], abs=1e-6)
    assert len(lm.model._prompts) == 1


def test_prefix_and_full_attention_differ(dmlm, tiny_decoder_mlm_prefix_dir: Path) -> None:
    pre = load_mlm(str(tiny_decoder_mlm_prefix_dir))
    prefix, cont = _ids(dmlm, PROMPT), _ids(dmlm, CONT)
    a = PLLScorer(dmlm).score_ids([cont], prefix)[0].total
    b = PLLScorer(pre).score_ids([cont], prefix)[0].total
    assert abs(a - b) > 1e-4  # the prompt no longer sees the continuation


def test_merged_adapter_equals_peft_model(tiny_llama_dir: Path, dmlm) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, dmlm.source).eval()
    start = dmlm.tokenizer.convert_tokens_to_ids(START_TOKEN)
    ids = torch.tensor([[start, *_ids(dmlm, CONT)]])
    keep = torch.ones_like(ids, dtype=torch.bool)
    with torch.inference_mode():
        want = peft_model.base_model.model.model(
            input_ids=ids, attention_mask=attention_mask_4d(keep)
        ).last_hidden_state
        got = dmlm.model.body.decoder(
            input_ids=ids, attention_mask=attention_mask_4d(keep)
        ).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5)
    # the adapter changes the model: the merged decoder is not the base one
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    with torch.inference_mode():
        before = plain.model(input_ids=ids, attention_mask=attention_mask_4d(keep))
    assert not torch.allclose(before.last_hidden_state, got, atol=1e-3)


def _copy_adapter(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_or_corrupt_adapter_is_one_line(tiny_decoder_mlm_dir: Path, tmp_path: Path) -> None:
    missing = _copy_adapter(tiny_decoder_mlm_dir, tmp_path / "missing")
    (missing / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="has no adapter_model.safetensors"):
        load_fresh(str(missing), "mlm")
    corrupt = _copy_adapter(tiny_decoder_mlm_dir, tmp_path / "corrupt")
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00" * 64 + b"not a tensor file")
    with pytest.raises(ModelLoadError, match="cannot apply the adapter") as err:
        load_fresh(str(corrupt), "mlm")
    assert "\n" not in str(err.value)
    spec = _copy_adapter(tiny_decoder_mlm_dir, tmp_path / "spec")
    (spec / "decoder_mlm.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="decoder_mlm.json"):
        load_fresh(str(spec), "mlm")


def test_missing_adapter_through_the_cli(
    invoke, tiny_decoder_mlm_dir: Path, tmp_path: Path
) -> None:
    broken = _copy_adapter(tiny_decoder_mlm_dir, tmp_path / "broken")
    (broken / "adapter_config.json").unlink()
    result = invoke("score", "--mlm", broken, "the cat")
    assert result.exit_code == 2
    assert "has no adapter_config.json" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_decoder_mlm_folder_is_not_a_causal_lm(tiny_decoder_mlm_dir: Path) -> None:
    check_kind(str(tiny_decoder_mlm_dir), "mlm")
    with pytest.raises(ModelLoadError, match="is a masked LM"):
        check_kind(str(tiny_decoder_mlm_dir), "causal")


def test_ga_runs_on_a_decoder_mlm(
    invoke, tiny_decoder_mlm_dir: Path, tiny_gpt2_dir, tmp_path: Path
) -> None:
    """Mutation fills, crossover seam repair, PLL fitness and MH all on the decoder MLM."""
    db = tmp_path / "r.db"
    result = invoke(
        "run",
        "--db",
        db,
        "--mlm",
        tiny_decoder_mlm_dir,
        "--causal",
        tiny_gpt2_dir,
        "--prompt",
        "Cheddar is",
        "-p",
        "6",
        "-g",
        "2",
        "--seed",
        "1",
        "--mh",
        "-q",
    )
    assert result.exit_code == 0, result.output + result.stderr
    rows = json.loads(
        invoke(
            "sql", "--db", db, "--json", "SELECT op, fitness FROM individuals WHERE generation = 2"
        ).output
    )
    assert len(rows) == 6
    assert all(r["fitness"] is not None and r["fitness"] < 0 for r in rows)
    ops = {
        r["op"]
        for r in json.loads(
            invoke("sql", "--db", db, "--json", "SELECT DISTINCT op FROM individuals").output
        )
    }
    assert any(op.startswith("cx_") for op in ops)


def test_prefix_proposer_runs_the_prompt_once_and_proposes_as_it_scores(
    tiny_decoder_mlm_prefix_dir: Path, dmlm
) -> None:
    """With prefix attention the proposer's logits are those of the prefix-attention model
    on the whole input (the prompt attends only to itself), for requests of different
    lengths in one batch; a full-attention model ignores `FillRequest.prompt`."""
    from evolve.ga.proposers import FillRequest
    from evolve.ga.proposers.mlm import MLMProposer

    lm = load_mlm(str(tiny_decoder_mlm_prefix_dir))
    start = lm.tokenizer.convert_tokens_to_ids(START_TOKEN)
    head = [start, *_ids(lm, PROMPT)]
    conts = [_ids(lm, t) for t in (CONT, " white and soft", " yes")]
    requests = [
        FillRequest((*head, *c), (len(head) + 1, len(head) + len(c) - 1), prompt=len(head))
        for c in conts
    ]
    proposer = MLMProposer(lm)
    queries = [(proposer._masked(r), p) for r in requests for p in r.positions]
    prompts = [r.prompt for r in requests for _ in r.positions]
    got = proposer._logits(queries, prompts=prompts)
    for (row, p), logits in zip(queries, got, strict=True):
        ids = torch.tensor([row])
        keep = torch.ones_like(ids, dtype=torch.bool)
        prompt = torch.zeros_like(keep)
        prompt[0, : len(head)] = True
        with torch.inference_mode():
            hidden = lm.model.body.decoder(
                input_ids=ids, attention_mask=attention_mask_4d(keep, prompt=prompt)
            ).last_hidden_state
            want = lm.model.lm_head(hidden[0, p - 1]).float()
        assert torch.allclose(logits, want, atol=1e-4)
    assert list(lm.model._prompts) == [tuple(head)]
    # seeded fills and their reverse probabilities agree on the prompted path
    seeded = [
        FillRequest(r.input_ids, r.positions, seed=7 + i, prompt=r.prompt)
        for i, r in enumerate(requests)
    ]
    filled, logq = proposer.fill(seeded, return_logq=True)
    targets = [[row[p] for p in r.positions] for row, r in zip(filled, seeded, strict=True)]
    assert proposer.logprob_of(seeded, targets) == pytest.approx(logq, abs=1e-4)
    alone = [proposer.fill([r])[0] for r in seeded]
    assert alone == filled
    # full attention: the prompt length changes nothing
    full = MLMProposer(dmlm)
    plain = [FillRequest(r.input_ids, r.positions) for r in requests]
    a = full._logits([(full._masked(r), p) for r in plain for p in r.positions])
    b = full._logits(queries, prompts=prompts)
    assert torch.equal(a, b)
