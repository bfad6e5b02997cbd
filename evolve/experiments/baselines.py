"""Baseline continuations from a causal LM: greedy, beam search and sampling, stored as records.

The evolved texts need something to be measured against: what ordinary GPT-style decoding
writes after the same prompt, at the same length. Each baseline text is generated with
Hugging Face ``generate()`` on the causal LM and stored with `LogStore.add_baseline`
(method, model, decoding parameters, seed), either standalone or linked to a run.

Decisions that make the comparison fair and repeatable:

- Same prompt and same length. For a run, the prompt is the run's and the length is its best
  evolved continuation's length in causal-LM tokens; every method writes exactly that many
  tokens.
- Greedy, beam search and sampling decode in `scoring.decoding` (also what a run's generation
  0 decodes with); the lookahead methods (amplified, particle, learned) in
  `evolve.experiments.amplify` and `evolve.experiments.amplifier`.
- One seed per sampled text (``seed``, ``seed + 1``, ...), set just before its own call, so
  the stored seed alone reproduces that text.
- Asking again for a text already stored (same run, prompt, method, model, parameters and
  seed) returns the stored one (`LogStore.stored_or_new_baselines`): the same seed gives the
  same text, and a duplicate would count twice in the comparison.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evolve.ga.config import TEMPERATURE_MAX, TEMPERATURE_MIN
from evolve.store import LogStore
from scoring.decoding import (
    DEFAULT_NEW_TOKENS,
    Decoding,
    decode,
    prompt_ids,
)
from scoring.devices import check_device
from scoring.errors import UserError
from scoring.models import DEFAULT_CAUSAL, LoadedModel, load_causal
from scoring.template import text_ids

METHODS = ("greedy", "beam", "sample", "amplified", "particle", "learned")
# amplified, particle and learned cost D forwards a token (and learned needs an amplifier
# checkpoint): opt-in
DEFAULT_METHODS = ("greedy", "beam", "sample")

_DECODING = Decoding()

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


@dataclass(frozen=True)
class BaselineConfig:
    """What to generate; `validate` checks every field, `resolve` fills model, prompt, length."""

    prompt: str = field(
        default="",  # with run_id, empty means the run's prompt
        metadata={"help": r"Prompt to continue (\n means a newline); default: the run's."},
    )
    run_id: int | None = field(
        default=None, metadata={"help": "Link to this run: its prompt and length."}
    )
    methods: tuple[str, ...] = field(
        default=DEFAULT_METHODS,
        metadata={
            "help": "Decoding method (repeatable) [default: greedy, beam, sample; amplified, "
            "particle and learned are opt-in]: one call fills a comparison."
        },
    )
    causal: str = field(
        default="",  # empty: the run's causal LM, else DEFAULT_CAUSAL (packaged, offline)
        metadata={"help": f"Causal LM [default: the run's, else {DEFAULT_CAUSAL}]."},
    )
    new_tokens: int | None = field(
        default=None,  # None: the run's best length, else DEFAULT_NEW_TOKENS
        metadata={
            "help": "Continuation length in causal-LM tokens [default: the run's best, else "
            f"{DEFAULT_NEW_TOKENS}]."
        },
    )
    # The settings greedy, beam search and sampling share with a run's generation 0: defaults
    # (and why each is what it is) in `scoring.decoding.Decoding`.
    num_beams: int = field(
        default=_DECODING.num_beams, metadata={"help": "Beam width (a common one)."}
    )
    length_penalty: float = field(
        default=_DECODING.length_penalty,
        metadata={
            "help": "Beam search's length penalty (transformers' default; moot here, as all "
            "beams end equally long)."
        },
    )
    no_repeat_ngram_size: int = field(
        default=_DECODING.no_repeat_ngram_size,
        metadata={"help": "Beam search: ban repeated n-grams of this size; 0 = off."},
    )
    num_return_sequences: int = field(
        default=_DECODING.num_return_sequences,
        metadata={"help": "Beams kept from beam search (as it is used: its single best)."},
    )
    temperature: float = field(
        default=_DECODING.temperature,
        metadata={"help": "Sampling temperature; 1 = the model's own distribution."},
    )
    top_k: int = field(
        default=_DECODING.top_k,
        metadata={"help": "Sampling: keep the k likeliest tokens; 0 = no cut."},
    )
    top_p: float = field(
        default=_DECODING.top_p,
        metadata={"help": "Nucleus sampling (Holtzman et al. 2020), a common default."},
    )
    typical_p: float = field(
        default=_DECODING.typical_p,
        metadata={"help": "Locally typical sampling (Meister et al.), e.g. 0.95; 1 = off."},
    )
    samples: int = field(
        default=_DECODING.samples,
        metadata={"help": "Sampled texts, one seed each: enough for distinct-n and self-BLEU."},
    )
    amp_depth: int = field(
        default=3, metadata={"help": "Amplified: lookahead D (the beam width is `num_beams`)."}
    )
    amp_lambda: float = field(
        default=0.5,
        metadata={"help": "Amplified: mix weight of the beams' first-token distribution."},
    )
    particles: int = field(
        default=16,
        metadata={"help": "Particle: paths per token, as evolve amplify's default."},
    )
    beta: float = field(
        default=2.0,
        metadata={"help": "Particle: target p(path)^beta, as evolve amplify's default."},
    )
    amplifier: str = field(
        default="",
        metadata={
            "help": "Learned: folder of a learned amplifier (from evolve stunt --variant "
            "adversarial --save DIR: DIR/amplifier)."
        },
    )
    seed: int = field(
        default=_DECODING.seed,
        metadata={"help": "First sample's seed; greedy and beam search record it too."},
    )
    device: str = field(
        default="cpu", metadata={"help": "Torch device of the model: cpu, cuda, cuda:N or mps."}
    )

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
        self.decoding().validate()
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
            TEMPERATURE_MIN <= self.temperature <= TEMPERATURE_MAX,
            f"temperature must lie within [{TEMPERATURE_MIN:g}, {TEMPERATURE_MAX:g}] "
            f"(got {self.temperature:g}); use greedy for 0",
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

    def decoding(self) -> Decoding:
        """The settings of greedy, beam search and sampling (`scoring.decoding`), for the
        run's length where `new_tokens` is still None."""
        return Decoding(
            new_tokens=DEFAULT_NEW_TOKENS if self.new_tokens is None else self.new_tokens,
            num_beams=self.num_beams,
            length_penalty=self.length_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            num_return_sequences=self.num_return_sequences,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            typical_p=self.typical_p,
            samples=self.samples,
            seed=self.seed,
        )

    def params(self, method: str) -> dict[str, Any]:
        """The decoding parameters stored with each text of `method` (seed aside)."""
        # new_tokens as set: None until `resolve` measures the run
        base = {**self.decoding().params(method), "new_tokens": self.new_tokens}
        if method == "amplified":
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
    ids = prompt_ids(lm, cfg.prompt, cfg.new_tokens, cfg.causal)
    decoding = cfg.decoding()
    out: list[BaselineText] = []
    for method in cfg.methods:
        params = cfg.params(method)
        sampled = method in ("sample", "amplified", "particle", "learned")
        for seed in decoding.seeds(sampled):
            made = store.stored_or_new_baselines(
                cfg.prompt,
                method,
                cfg.causal,
                params,
                seed,
                decoding.texts_per_call(method),
                functools.partial(_generate, lm, cfg, method, ids, seed),
                run_id=cfg.run_id,
            )
            out.extend(
                BaselineText(i, method, cfg.causal, params, seed, text, reused)
                for i, text, reused in made
            )
    return out


def _generate(
    lm: LoadedModel, cfg: BaselineConfig, method: str, ids: Sequence[int], seed: int
) -> list[str]:
    """The continuations one call of `method` makes (several for beam with returns)."""
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
    return decode(lm, ids, method, cfg.decoding(), seed)
