"""The offline corpus and `evolve adapt-mlm` (evolve.experiments.adapt) on a tiny Llama:
splits, batches, exact resume, the CLI, and the adapter it writes loading as a masked LM."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CORPUS

from evolve.experiments import corpus
from evolve.experiments.adapt import AdaptConfig, TokenDocs, make_batch, train_adapter
from scoring.decoder_mlm import MASK_TOKEN, START_TOKEN, DecoderMLMSpec, prepare_tokenizer
from scoring.errors import UserError
from scoring.models import load_fresh, load_mlm
from scoring.pll import PLLScorer

B64 = corpus._B64


def _b64(n: int) -> str:
    out = ""
    while True:
        out = B64[n % 64] + out
        n //= 64
        if not n:
            return out


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Small files shaped like the Debian packages', under a corpus root of their own."""
    root = tmp_path / "root"
    fortunes = root / "usr/share/games/fortunes"
    fortunes.mkdir(parents=True)
    texts = sorted(set(CORPUS))
    for topic in ("songs-poems", "cookie", "literature", "humorists", "wisdom"):
        (fortunes / topic).write_text("\n%\n".join(texts) + "\n%\n")
        (fortunes / f"{topic}.dat").write_bytes(b"\x00\x01binary index")
    (fortunes / "cookie.u8").symlink_to(fortunes / "cookie")
    wordnet = root / "usr/share/wordnet"
    wordnet.mkdir(parents=True)
    lines = ["  1 This software and database is being provided ..."]
    for i, word in enumerate(["cheese", "fox", "store", "milk", "city", "river"] * 20):
        lines.append(f"{i:08d} 05 n 01 {word}_{i} 0 000 | a word for {word} number {i}")
    (wordnet / "data.noun").write_text("\n".join(lines) + "\n")
    dictd = root / "usr/share/dictd"
    dictd.mkdir(parents=True)
    for name in ("devil", "jargon"):
        articles = [f"WORD{i}, n.  {t}\nstill the same paragraph.\n" for i, t in enumerate(texts)]
        data, index, at = b"", [], 0
        for i, art in enumerate(articles):
            raw = art.encode()
            index.append(f"word{i}\t{_b64(at)}\t{_b64(len(raw))}")
            data += raw
            at += len(raw)
        (dictd / f"{name}.dict.dz").write_bytes(gzip.compress(data))
        (dictd / f"{name}.index").write_text("\n".join(index) + "\n")
    licenses = root / "usr/share/common-licenses"
    licenses.mkdir(parents=True)
    (licenses / "Apache-2.0").write_text("\n\n".join(texts))
    (licenses / "Apache").symlink_to(licenses / "Apache-2.0")
    monkeypatch.setenv(corpus.ROOT_ENV, str(root))
    return root


def test_corpus_reads_every_source_and_splits_by_content(fake_root: Path) -> None:
    for name in corpus.SOURCES:
        docs = corpus.read_source(name)
        assert docs and all(d.text and d.source == name for d in docs)
    fortunes = corpus.read_source("fortunes")
    assert {d.key.split("/")[1].split("#")[0] for d in fortunes} == {
        "songs-poems",
        "cookie",
        "literature",
        "humorists",
        "wisdom",
    }  # no .dat index, no .u8 link read twice
    assert {corpus.split_of(d) for d in fortunes if "literature" in d.key} == {"test"}
    assert {corpus.split_of(d) for d in fortunes if "wisdom" in d.key} == {"dev"}
    assert {corpus.split_of(d) for d in fortunes if "cookie" in d.key} == {"train"}
    devil = corpus.read_source("devil")
    assert "\n" not in devil[0].text  # hard-wrapped prose joined
    assert devil[0].text.startswith("WORD0, n.")
    wordnet = corpus.read_source("wordnet")
    assert wordnet[0].text == "cheese 0 (noun): a word for cheese number 0"
    assert len(corpus.read_source("licenses")) == len(set(CORPUS))  # the link read once
    # the split is a function of the key: the same on every call, and all three occur
    splits = [corpus.split_of(d) for d in wordnet]
    assert splits == [corpus.split_of(d) for d in corpus.read_source("wordnet")]
    train = corpus.load_corpus("train")
    assert not any("literature" in d.key or "wisdom" in d.key for d in train)


def test_missing_source_names_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(corpus.ROOT_ENV, str(tmp_path))
    with pytest.raises(UserError, match="apt-get install wordnet-base"):
        corpus.load_corpus("train", ["wordnet"])
    with pytest.raises(UserError, match="unknown corpus source"):
        corpus.load_corpus("train", ["gutenberg"])


@pytest.fixture
def tokenizer(tiny_llama_dir: Path):
    base = load_fresh(str(tiny_llama_dir), "causal")
    return prepare_tokenizer(base.tokenizer, DecoderMLMSpec(base=str(tiny_llama_dir)))


def _config(tiny_llama_dir: Path, **kw) -> AdaptConfig:
    values = dict(
        base=str(tiny_llama_dir),
        steps=4,
        batch_size=3,
        seq_len=32,
        sources=("fortunes",),
        weights=(1.0,),
        eval_every=2,
        dev_positions=24,
        checkpoint_every=2,
        bf16=False,
        warmup=1,
        lr=1e-2,
    )
    values.update(kw)
    return AdaptConfig(**values).validate()


def test_batches_mask_only_documents_and_keep_attention_inside(
    fake_root: Path, tokenizer, tiny_llama_dir: Path
) -> None:
    config = _config(tiny_llama_dir, prefix_share=0.5, batch_size=6)
    docs = corpus.load_corpus("train", config.sources)
    data = TokenDocs.build(tokenizer, docs, config.sources, config.weights)
    batch = make_batch(data, config, 1)
    again = make_batch(data, config, 1)
    assert torch.equal(batch.ids, again.ids) and torch.equal(batch.mask, again.mask)
    assert not torch.equal(batch.ids, make_batch(data, config, 2).ids)
    start = tokenizer.convert_tokens_to_ids(START_TOKEN)
    mask_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    assert batch.n_masked > 0
    assert bool((batch.ids[batch.rows, batch.cols] == mask_id).all())
    assert bool((batch.cols >= 1).all())
    assert not bool((batch.targets == start).any())  # start tokens are never masked
    # the position before each masked token is in the same document (attends to it)
    m = batch.mask[:, 0]
    assert bool(m[batch.rows, batch.cols, batch.cols - 1].all())
    # documents do not see each other: a start token after position 0 opens a new block
    for b in range(batch.ids.shape[0]):
        starts = (batch.ids[b] == start).nonzero().flatten().tolist()
        if len(starts) > 1:
            assert not bool(m[b, starts[1], starts[0]])
    # prefix-trained documents: some query sees fewer keys than its document has
    assert bool((m.sum(-1) < m.sum(-2)).any())


def test_training_resumes_exactly(fake_root: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    config = _config(tiny_llama_dir)
    whole = train_adapter(load_fresh(str(tiny_llama_dir), "causal"), config, tmp_path / "a")
    assert whole.step == 4 and not whole.interrupted
    half = train_adapter(
        load_fresh(str(tiny_llama_dir), "causal"), _config(tiny_llama_dir, steps=2), tmp_path / "b"
    )
    assert half.step == 2
    resumed = train_adapter(load_fresh(str(tiny_llama_dir), "causal"), config, tmp_path / "b")
    assert resumed.step == 4
    a = {n: p for n, p in whole.model.named_parameters() if p.requires_grad}
    b = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = [r["loss"] for r in whole.log if r["kind"] == "step"]
    assert losses == [r["loss"] for r in resumed.log if r["kind"] == "step"]
    evals = [r["step"] for r in resumed.log if r["kind"] == "eval"]
    assert evals == [0, 2, 4]
    # training moved the adapter away from PEFT's no-op start
    assert any(float(p.detach().abs().max()) > 0 for n, p in a.items() if "lora_B" in n)
    with pytest.raises(UserError, match="another configuration"):
        train_adapter(
            load_fresh(str(tiny_llama_dir), "causal"),
            _config(tiny_llama_dir, lr=0.5),
            tmp_path / "b",
        )


def test_cli_trains_and_the_adapter_loads_as_a_masked_lm(
    invoke, fake_root: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = [
        "adapt-mlm",
        "--out",
        out,
        "--base",
        tiny_llama_dir,
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--sources",
        "fortunes",
        "--weights",
        "1",
        "--eval-every",
        "3",
        "--dev-positions",
        "16",
        "--checkpoint-every",
        "1",
        "--no-bf16",
        "--heldout-positions",
        "16",
        "--json",
    ]
    result = invoke(*args)
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    adapter = Path(report["adapter"])
    assert (adapter / "decoder_mlm.json").is_file()
    assert report["steps"] == 3
    held = report["heldout"]
    assert held["mlm_positions"] >= 16 and held["mlm_positions"] == held["causal_positions"]
    spec = json.loads((adapter / "decoder_mlm.json").read_text())
    assert spec["base"] == str(tiny_llama_dir)
    assert spec["training"]["config"]["steps"] == 3
    lm = load_mlm(str(adapter))
    scores = PLLScorer(lm).score(["cheddar is yellow"], prefix="Mozzarella is white")
    assert scores[0].n_tokens > 0 and np.isfinite(scores[0].total)
    # a second call finds the finished checkpoint and only exports again
    assert invoke(*args).exit_code == 0
    # the checkpoint itself loads as a masked LM (to try a long run while it goes on)
    checkpoint = json.loads((out / "checkpoint" / "decoder_mlm.json").read_text())
    assert checkpoint["training"]["steps"] == 3
    assert [r["step"] for r in checkpoint["training"]["dev"]] == [0, 3]
    mid = load_mlm(str(out / "checkpoint"))
    again = PLLScorer(mid).score(["cheddar is yellow"], prefix="Mozzarella is white")
    assert again[0].total == pytest.approx(scores[0].total, abs=1e-4)


def test_cli_refuses_bad_options(invoke, tmp_path: Path, tiny_llama_dir: Path) -> None:
    result = invoke("adapt-mlm", "--out", tmp_path / "x", "--mask-rate", "1.5")
    assert result.exit_code == 2 and "mask-rate must be within [0, 1]" in result.stderr
    result = invoke("adapt-mlm", "--out", tmp_path / "x", "--weights", "1,2")
    assert result.exit_code == 2 and "2 weights for 5 sources" in result.stderr
    result = invoke("adapt-mlm", "--out", tmp_path / "x", "--base", tmp_path)
    assert result.exit_code == 2 and "no config.json" in result.stderr
