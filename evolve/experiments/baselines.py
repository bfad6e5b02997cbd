"""Baseline continuations from a causal LM: greedy, beam search and sampling, stored as records.

The evolved texts need something to be measured against: what ordinary GPT-style decoding
writes after the same prompt, at the same length. Each baseline text is generated with
Hugging Face ``generate()`` on the causal LM and stored with `LogStore.add_baseline`
(method, model, decoding parameters, seed), either standalone or linked to a run.

Decisions that make the comparison fair and repeatable:

- Same prompt and same length. For a run, the prompt is the run's and the length is its best
  evolved continuation's length in causal-LM tokens; ``min_new_tokens = max_new_tokens``
  forces every method to exactly that length (end-of-text cannot stop it early).
- The prompt is tokenised without special tokens, exactly as `scoring.causal.CausalScorer`
  conditions on it, so the baselines come from the distribution the judge scores.
- A fresh ``GenerationConfig`` per method: the model's own generation defaults (a stored
  top_k of 50, a repetition penalty) would otherwise leak into the baselines silently.
- The prompt's key/value cache is shared with the run's scorer and proposer
  (`scoring.causal.PrefixCache`): ``generate()`` gets it and runs only the prompt's last token
  and the new ones, instead of the whole prompt once per beam.
- One seed per sampled text (``seed``, ``seed + 1``, ...), set with `seed_everything` just
  before its own ``generate()`` call, so the stored seed alone reproduces that text.
- Asking again for a text already stored (same run, prompt, method, model, parameters and
  seed) returns the stored one: the same seed gives the same text, and a duplicate would
  count twice in the comparison.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evolve.ga.config import INT64_MAX, TEMPERATURE_MAX, TEMPERATURE_MIN
from evolve.ga.seeding import seed_everything
from evolve.store import LogStore
from scoring.causal import prefix_cache_of
from scoring.devices import check_device
from scoring.errors import UserError
from scoring.models import DEFAULT_CAUSAL, LoadedModel, load_causal
from scoring.template import text_ids

METHODS = ("greedy", "beam", "sample", "amplified", "particle", "learned")
# amplified, particle and learned cost D forwards a token (and learned needs an amplifier
# checkpoint): opt-in
DEFAULT_METHODS = ("greedy", "beam", "sample")
DEFAULT_NEW_TOKENS = 20  # without a run: about the length of a default evolved continuation

# Short names for the settings column of the comparison table.
_SHORT = {
    "num_beams": "beams",
    "length_penalty": "lp",
    "no_repeat_ngram_size": "no_repeat",
    "num_return_sequences": "returns",
    "temperature": "t",
    "top_k": "k",
    "top_p": "p",
    "typical_p": "typical",
}


# Upper bounds: every beam is a row of every forward pass, so memory grows with the width,
# and each sample is one generate() call of its own.
MAX_BEAMS = 1024
MAX_SAMPLES = 10_000


@dataclass(frozen=True)
class BaselineConfig:
    """What to generate; `validate` checks every field, `resolve` fills model, prompt, length."""

    prompt: str = ""  # the prompt; with run_id, empty means "the run's prompt"
    run_id: int | None = None  # link the baselines to this run (prompt and length from it)
    methods: tuple[str, ...] = DEFAULT_METHODS  # one call fills a comparison
    causal: str = ""  # empty: the run's causal LM, else DEFAULT_CAUSAL (packaged, offline)
    new_tokens: int | None = None  # None: the run's best length, else DEFAULT_NEW_TOKENS
    num_beams: int = 4  # a common beam width
    length_penalty: float = 1.0  # transformers' default; moot here, as all beams end equally long
    no_repeat_ngram_size: int = 0  # 0 = off: plain beam search, repetitions included
    num_return_sequences: int = 1  # beam search as it is used: its single best beam
    temperature: float = 1.0  # the model's own distribution
    top_k: int = 0  # 0 = no cut; top_p trims the tail instead
    top_p: float = 0.9  # nucleus sampling (Holtzman et al. 2020), a common default
    typical_p: float = 1.0  # 1.0 = off; e.g. 0.95 for locally typical sampling (Meister et al.)
    samples: int = 5  # sampled texts (one seed each): enough for distinct-n and self-BLEU
    amp_depth: int = 3  # amplified sampling: lookahead depth D (beam width is num_beams)
    amp_lambda: float = 0.5  # amplified sampling: weight of the beams' first-token distribution
    particles: int = 16  # particle sampling: paths per token, as `evolve amplify`'s default
    beta: float = 2.0  # particle sampling: target p(path)^beta, as `evolve amplify`'s default
    amplifier: str = (
        ""  # learned sampling: a learned amplifier's folder (stunt --save DIR/amplifier)
    )
    seed: int = 0  # the first sample's seed; greedy and beam record it too
    device: str = "cpu"

    def validate(self) -> BaselineConfig:
        """Check every option once; raise UserError with a one-line message. Returns self."""
        if self.run_id is None and not self.prompt.strip():
            raise UserError("the prompt is empty; give --prompt or --run")
        _require(bool(self.methods), "no decoding method chosen")
        for method in self.methods:
            _require(
                method in METHODS,
                f"unknown decoding method {method!r}; choose from {', '.join(METHODS)}",
            )
        if self.new_tokens is not None:
            _require(self.new_tokens >= 1, f"new_tokens must be at least 1 (got {self.new_tokens})")
        _require(self.num_beams >= 1, f"num_beams must be at least 1 (got {self.num_beams})")
        _require(
            self.num_beams <= MAX_BEAMS,
            f"num_beams must be at most {MAX_BEAMS} (got {self.num_beams})",
        )
        _require(self.amp_depth >= 1, f"amp_depth must be at least 1 (got {self.amp_depth})")
        _require(
            0 <= self.amp_lambda <= 1, f"amp_lambda must lie within [0, 1] (got {self.amp_lambda})"
        )
        if "particle" in self.methods:
            from evolve.experiments.lookahead import check_particles

            check_particles(self.particles, self.beta)
        if "learned" in self.methods:
            _require(
                bool(self.amplifier),
                "method learned needs --amplifier DIR (a learned amplifier's folder, e.g. "
                "DIR/amplifier of `evolve stunt --variant adversarial --save DIR`)",
            )
            from evolve.experiments.amplifier import load_amplifier

            load_amplifier(self.amplifier)  # a missing or broken checkpoint fails here, early
        _require(
            1 <= self.num_return_sequences <= self.num_beams,
            f"num_return_sequences must lie within [1, num_beams={self.num_beams}] "
            f"(got {self.num_return_sequences})",
        )
        _require(math.isfinite(self.length_penalty), "length_penalty must be finite")
        _require(self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0 (0 = off)")
        _require(
            TEMPERATURE_MIN <= self.temperature <= TEMPERATURE_MAX,
            f"temperature must lie within [{TEMPERATURE_MIN:g}, {TEMPERATURE_MAX:g}] "
            f"(got {self.temperature:g}); use greedy for 0",
        )
        _require(self.top_k >= 0, f"top_k must be >= 0 (0 = no cut; got {self.top_k})")
        _require(0 < self.top_p <= 1, f"top_p must lie within (0, 1] (got {self.top_p})")
        _require(
            0 < self.typical_p <= 1, f"typical_p must lie within (0, 1] (got {self.typical_p})"
        )
        _require(self.samples >= 1, f"samples must be at least 1 (got {self.samples})")
        _require(
            self.samples <= MAX_SAMPLES,
            f"samples must be at most {MAX_SAMPLES} (got {self.samples})",
        )
        # Each sample's seed is stored as a SQLite INTEGER (signed 64-bit).
        _require(
            self.seed >= 0 and self.seed + self.samples - 1 <= INT64_MAX,
            f"seed + samples must stay within [0, 2**63-1] (got seed {self.seed})",
        )
        check_device(self.device)
        return self

    def with_model(self, store: LogStore) -> BaselineConfig:
        """A copy with `causal` set: as given, else the run's causal LM, else the default."""
        if self.causal:
            return self
        run_causal = store.run(self.run_id)["causal"] if self.run_id is not None else None
        return dataclasses.replace(self, causal=run_causal or DEFAULT_CAUSAL)

    def resolve(self, store: LogStore, lm: LoadedModel) -> BaselineConfig:
        """A copy with model, prompt and new_tokens set: from the run when linked, else defaults.

        `lm` is the loaded causal LM; it measures the run's best continuation in its tokens.
        """
        cfg = self.validate().with_model(store)
        prompt, new_tokens = cfg.prompt, cfg.new_tokens
        if cfg.run_id is not None:
            run = store.run(cfg.run_id)  # StoreError (a UserError) for an unknown run
            if prompt and prompt != run["prompt"]:
                raise UserError(
                    f"--prompt differs from run {cfg.run_id}'s prompt; leave it out with --run"
                )
            prompt = run["prompt"]
            if new_tokens is None:
                new_tokens = run_length(store, cfg.run_id, lm)
        return dataclasses.replace(
            cfg, prompt=prompt, new_tokens=new_tokens or DEFAULT_NEW_TOKENS
        ).validate()

    def params(self, method: str) -> dict[str, Any]:
        """The decoding parameters stored with each text of `method` (seed aside)."""
        base: dict[str, Any] = {"new_tokens": self.new_tokens}
        if method == "beam":
            base.update(
                num_beams=self.num_beams,
                length_penalty=self.length_penalty,
                no_repeat_ngram_size=self.no_repeat_ngram_size,
                num_return_sequences=self.num_return_sequences,
            )
        elif method == "sample":
            base.update(
                temperature=self.temperature,
                top_k=self.top_k,
                top_p=self.top_p,
                typical_p=self.typical_p,
            )
        elif method == "amplified":
            base.update(
                num_beams=self.num_beams,
                depth=self.amp_depth,
                lam=self.amp_lambda,
                temperature=self.temperature,
            )
        elif method == "particle":
            base.update(
                particles=self.particles,
                beta=self.beta,
                depth=self.amp_depth,
                lam=self.amp_lambda,
                temperature=self.temperature,
            )
        elif method == "learned":
            base.update(amplifier=self.amplifier, temperature=self.temperature)
        return base


@dataclass(frozen=True)
class BaselineText:
    """One stored baseline continuation."""

    id: int  # baselines.id in the store
    method: str
    model: str  # the causal LM that wrote it
    params: dict[str, Any]
    seed: int
    text: str  # the continuation alone, with its leading space
    reused: bool  # True when it was already stored and not generated again


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def settings_label(params: dict[str, Any]) -> str:
    """Decoding parameters in short form for a table cell (length left out)."""
    return " ".join(f"{_SHORT.get(k, k)}={_fmt(v)}" for k, v in params.items() if k != "new_tokens")


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_length(store: LogStore, run_id: int, lm: LoadedModel) -> int:
    """Length in causal-LM tokens of the run's best evolved continuation."""
    best = store.best(run_id, 1)
    if not best:
        raise UserError(f"run {run_id} has no scored individual yet, so it has no length to match")
    return len(_encode(lm, best[0]["text"]))


def _encode(lm: LoadedModel, text: str) -> list[int]:
    return text_ids(lm.tokenizer, text)


def generate_baselines(
    cfg: BaselineConfig, store: LogStore, lm: LoadedModel | None = None
) -> list[BaselineText]:
    """Generate (or find already stored) the configured baselines; store each new text.

    `lm` defaults to loading `cfg.causal` (or the run's causal LM); pass one to reuse a
    loaded model.
    """
    cfg = cfg.validate().with_model(store)
    lm = lm if lm is not None else load_causal(cfg.causal, device=cfg.device)
    cfg = cfg.resolve(store, lm)
    assert cfg.new_tokens is not None
    prompt_ids = _encode(lm, cfg.prompt)
    if not prompt_ids:
        raise UserError("the prompt has no tokens under the causal LM's tokenizer")
    if len(prompt_ids) + cfg.new_tokens > lm.max_length:
        raise UserError(
            f"prompt ({len(prompt_ids)} tokens) + {cfg.new_tokens} new tokens exceeds "
            f"{cfg.causal}'s window of {lm.max_length}"
        )
    stored = [
        b
        for b in store.baselines(run_id=cfg.run_id, prompt=cfg.prompt)
        if b["run_id"] == cfg.run_id
    ]
    out: list[BaselineText] = []
    for method in cfg.methods:
        params = cfg.params(method)
        sampled = method in ("sample", "amplified", "particle", "learned")
        seeds = [cfg.seed + i for i in range(cfg.samples)] if sampled else [cfg.seed]
        for seed in seeds:
            same = [
                b
                for b in stored
                if (b["method"], b["model"], b["params"], b["seed"])
                == (method, cfg.causal, params, seed)
            ]
            wanted = cfg.num_return_sequences if method == "beam" else 1
            out.extend(
                BaselineText(b["id"], method, cfg.causal, params, seed, b["text"], reused=True)
                for b in same[:wanted]
            )
            if len(same) >= wanted:
                continue
            # Deterministic for a seed: the first len(same) texts are the stored ones (left
            # by a call that stopped part-way), so only the rest are added.
            for text in _generate(lm, cfg, method, prompt_ids, seed)[len(same) :]:
                new_id = store.add_baseline(
                    cfg.prompt, method, cfg.causal, params, seed, text, run_id=cfg.run_id
                )
                out.append(
                    BaselineText(new_id, method, cfg.causal, params, seed, text, reused=False)
                )
    return out


def _generate(
    lm: LoadedModel, cfg: BaselineConfig, method: str, prompt_ids: Sequence[int], seed: int
) -> list[str]:
    """The continuations one ``generate()`` call makes (several for beam with returns)."""
    import torch
    from transformers import GenerationConfig

    if method == "amplified":
        from evolve.experiments.amplify import sample_amplified

        sample = sample_amplified(
            lm,
            cfg.prompt,
            max_new_tokens=cfg.new_tokens or DEFAULT_NEW_TOKENS,
            beams=cfg.num_beams,
            depth=cfg.amp_depth,
            lam=cfg.amp_lambda,
            temperature=cfg.temperature,
            seed=seed,
        )
        return [sample.text]
    if method == "particle":
        from evolve.experiments.amplify import sample_particle

        sample = sample_particle(
            lm,
            cfg.prompt,
            max_new_tokens=cfg.new_tokens or DEFAULT_NEW_TOKENS,
            particles=cfg.particles,
            beta=cfg.beta,
            depth=cfg.amp_depth,
            lam=cfg.amp_lambda,
            temperature=cfg.temperature,
            seed=seed,
        )
        return [sample.text]
    if method == "learned":
        from evolve.experiments.amplifier import learned_next, load_amplifier
        from evolve.experiments.amplify import sample_with

        amp = load_amplifier(cfg.amplifier)
        sample = sample_with(
            lm,
            cfg.prompt,
            cfg.new_tokens or DEFAULT_NEW_TOKENS,
            learned_next(lm.model, amp, seed),
            temperature=cfg.temperature,
            seed=seed,
            reserve=amp.spec.depth,
        )
        return [sample.text]
    tok = lm.tokenizer
    eos = _eos_ids(lm)
    options: dict[str, Any] = {
        "max_new_tokens": cfg.new_tokens,
        "min_new_tokens": cfg.new_tokens,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else eos[0],
        "eos_token_id": eos,
    }
    if method == "greedy":
        options.update(do_sample=False, num_beams=1)
    elif method == "beam":
        options.update(
            do_sample=False,
            num_beams=cfg.num_beams,
            length_penalty=cfg.length_penalty,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size,
            num_return_sequences=cfg.num_return_sequences,
        )
    else:
        options.update(
            do_sample=True,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            typical_p=cfg.typical_p,
        )
    input_ids = torch.tensor([list(prompt_ids)], device=lm.device)
    # The prompt but its last token comes from the model's shared prefix cache (run once per
    # run and model, see `scoring.causal.PrefixCache`), one copy per beam: generate() then
    # runs only the last prompt token and the new ones.
    past = None
    if len(prompt_ids) > 1:
        rows = cfg.num_beams if method == "beam" else 1
        past = prefix_cache_of(lm).get(prompt_ids[:-1]).cache_for(rows)
    hf: Any = lm.model  # a transformers causal LM: generate() is not typed on nn.Module
    seed_everything(seed)
    with torch.inference_mode():
        output = hf.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            past_key_values=past,
            generation_config=GenerationConfig(**options),
        )
    return [_continuation_text(lm, prompt_ids, row[len(prompt_ids) :].tolist()) for row in output]


def _eos_ids(lm: LoadedModel) -> list[int]:
    """End-of-text ids of tokenizer and generation config, those the vocabulary holds.

    All of them, so that min_new_tokens suppresses every way to stop early; out-of-vocabulary
    ones (a GPT-2 config's default 50256 on a small vocabulary) are dropped.
    """
    found: list[int] = []
    configured = getattr(lm.model.generation_config, "eos_token_id", None)
    for value in (lm.tokenizer.eos_token_id, configured):
        for i in value if isinstance(value, list | tuple) else [value]:
            if i is not None and int(i) not in found:
                found.append(int(i))
    vocab = int(getattr(lm.model.config, "vocab_size", 0) or len(lm.tokenizer))
    found = [i for i in found if 0 <= i < vocab]
    if not found:
        raise UserError(f"{lm.name!r} has no end-of-text token, so generation cannot be bounded")
    return found


def _continuation_text(lm: LoadedModel, prompt_ids: Sequence[int], new_ids: list[int]) -> str:
    """The new tokens as text, with the spacing they have after the prompt.

    Decoding the new ids alone would drop a leading space under SentencePiece tokenizers;
    decoding prompt + continuation and cutting the decoded prompt off keeps it everywhere.
    """
    tok = lm.tokenizer
    options = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    head = tok.decode(list(prompt_ids), **options)
    full = tok.decode([*prompt_ids, *new_ids], **options)
    if full.startswith(head):
        return full[len(head) :]
    return tok.decode(new_ids, **options)
