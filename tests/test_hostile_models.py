"""Hostile model folders, misspelt model names and prompts that quote special tokens
(issue 25, items 9, 10 and 12).

- A folder whose config.json holds a JSON array, whose model.safetensors is random bytes, or
  whose pytorch_model.bin is a pickle with a payload: one line naming the folder and what is
  wrong, and the payload never runs.
- A misspelt preset fails at once without a network, and suggests the nearest preset; a
  missing folder given as a path says it does not exist.
- `[MASK]`, `[SEP]`, `[CLS]`, `<mask>`, `<filename>` and `<|endoftext|>` in user text are
  text: they never become the tokenizer's special ids.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers_proc import ROOT, child_env

from evolve.experiments.baselines import _encode
from evolve.ga.representation import Representation
from evolve.store import LogStore
from scoring import presets
from scoring.models import load_model
from scoring.pll import PLLScorer, naive_pll
from scoring.template import text_ids

Invoke = Callable[..., Result]


def one_error_line(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- item 9: broken model folders --------------------------------------------------------------


class Payload:
    """A pickle that would create a file when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def broken(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-models")
    folders = {}
    for name in ("config-list", "random-safetensors", "pickled-bin", "config-not-json"):
        folder = root / name
        shutil.copytree(tiny_bert_dir, folder)
        folders[name] = folder
    (folders["config-list"] / "config.json").write_text("[1, 2, 3]")
    (folders["config-not-json"] / "config.json").write_text("{not json")
    (folders["random-safetensors"] / "model.safetensors").write_bytes(os.urandom(4096))
    pickled = folders["pickled-bin"]
    for weights in pickled.glob("*.safetensors"):
        weights.unlink()
    with (pickled / "pytorch_model.bin").open("wb") as handle:
        pickle.dump(Payload(root / "PAYLOAD-RAN"), handle)
    folders["marker"] = root / "PAYLOAD-RAN"
    return folders


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("config-list", "config.json holds a JSON array, not an object, so it is no model config"),
        ("config-not-json", "config.json is not valid JSON"),
        ("random-safetensors", "model.safetensors is not a valid safetensors file"),
        ("pickled-bin", "pytorch_model.bin holds Python objects besides tensors"),
    ],
)
def test_a_broken_model_folder_is_one_line_naming_it(
    broken: dict[str, Path], invoke: Invoke, name: str, fragment: str
) -> None:
    folder = broken[name]
    for args in (["score", "--mlm", folder, "some words"], ["score", "x", "--causal", folder]):
        one_error_line(invoke(*args), str(folder), fragment)
    assert not broken["marker"].exists()  # the pickle's payload never ran


# -- item 10: misspelt presets and missing folders --------------------------------------------


def test_a_misspelt_preset_fails_at_once_offline_with_a_suggestion(invoke: Invoke) -> None:
    started = time.monotonic()
    line = one_error_line(invoke("score", "--mlm", "tinybert", "x"), "Did you mean 'tiny-bert'?")
    assert "offline" in line and time.monotonic() - started < 10
    one_error_line(invoke("score", "x", "--causal=smolm2-135m"), "Did you mean 'smollm2-135m'?")
    assert presets.did_you_mean("Tiny_BERT") == "Did you mean 'tiny-bert'? "
    assert presets.did_you_mean("roberta-base") == ""


def test_a_misspelt_judge_model_is_refused_before_the_run(
    tiny_bert_dir: Path, tmp_path: Path, invoke: Invoke
) -> None:
    db = tmp_path / "a.db"
    args = ["run", "--prompt", "Hi", "--mlm", tiny_bert_dir, "--causal", "smolm2-135m"]
    one_error_line(invoke(*args, "--db", db), "Did you mean 'smollm2-135m'?")
    with LogStore(db) as store:
        assert store.runs() == []  # refused before the run was created


@pytest.mark.parametrize("path", ["/missing/abs/path", "./missing", "~/missing-model", "a/b/c"])
def test_a_missing_folder_says_it_does_not_exist(invoke: Invoke, path: str) -> None:
    one_error_line(invoke("score", "--mlm", path, "x"), f"folder '{path}' does not exist")


def test_hub_reachability_is_asked_of_a_real_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        assert presets.hub_reachable(timeout=5)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        assert not presets.hub_reachable(timeout=5)
    finally:
        listening.close()
        closed.close()


def test_without_offline_mode_an_unreachable_hub_is_not_retried(tmp_path: Path) -> None:
    """No HF_HUB_OFFLINE and a hub that refuses connections: huggingface_hub used to retry
    with back-off and print a warning per try (~50 s where the name does not resolve)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    try:
        env = {k: v for k, v in child_env().items() if "OFFLINE" not in k and "PROXY" not in k}
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed.getsockname()[1]}"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", "from cli.process import main; main()", "score", "--mlm",
             "tinybert", "x"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        took = time.monotonic() - started
    finally:
        closed.close()
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "the hub cannot be reached" in lines[0], done.stderr
    assert "Did you mean 'tiny-bert'?" in lines[0] and took < 60, took


# -- item 12: special tokens quoted in user text -----------------------------------------------

SPECIAL_WORDS = ("[MASK]", "[SEP]", "[CLS]", "<mask>", "<s>", "</s>", "<|endoftext|>", "<filename>")
QUOTED = " ".join(SPECIAL_WORDS)


def _named_specials(tok: Any) -> set[int]:
    """The ids of the quoted words that this tokenizer treats as special tokens (a real mask,
    separator, start or end), which user text must never produce."""
    added = {t.content for t in (tok.added_tokens_decoder or {}).values() if t.special}
    special = set(tok.all_special_tokens) | added
    return {int(tok.convert_tokens_to_ids(w)) for w in SPECIAL_WORDS if w in special}


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_roberta_dir", "tiny_decoder_mlm_dir"])
def test_quoted_special_tokens_stay_text_in_masked_lms(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    lm = load_model(str(request.getfixturevalue(fixture)), "mlm")
    tok = lm.tokenizer
    specials = _named_specials(tok)
    assert tok.mask_token_id in specials  # [MASK], <mask>, <filename>
    assert not set(text_ids(tok, QUOTED)) & specials
    rep = Representation.build(lm, "The token " + QUOTED)
    assert not set(rep.prompt_ids) & specials and not set(rep.encode(QUOTED)) & specials
    scorer = PLLScorer(lm)
    (scored,) = scorer.score([" [MASK] <mask> <filename>"], prefix="Quoting [SEP] </s>")
    assert scored.n_tokens == len(text_ids(tok, " [MASK] <mask> <filename>")) > 3
    # The reference PLL (one forward per masked position) encodes the same way.
    (ref,) = naive_pll(lm, [" [MASK] <mask> <filename>"], prefix="Quoting [SEP] </s>")
    assert ref.n_tokens == scored.n_tokens
    assert ref.total == pytest.approx(scored.total, abs=1e-3)


def test_quoted_special_tokens_stay_text_in_causal_lms(tiny_gpt2_dir: Path) -> None:
    lm = load_model(str(tiny_gpt2_dir), "causal")
    assert lm.tokenizer.eos_token_id in _named_specials(lm.tokenizer)
    assert not set(_encode(lm, QUOTED)) & _named_specials(lm.tokenizer)


def test_score_counts_a_quoted_mask_as_its_characters(tiny_bert_dir: Path, invoke: Invoke) -> None:
    result = invoke("score", "--mlm", tiny_bert_dir, "[MASK]", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["results"]
    assert row["n_tokens"] > 1  # "[", "mask", "]" (the special id used to be 1 token)
