"""`evolve adapt-mlm`: train a LoRA adapter that makes a causal LM a masked LM (MNTP).

Masked next-token prediction (BehnamGhader et al. 2024, LLM2Vec) on offline English
(`evolve.experiments.corpus`): the decoder attends bidirectionally (`scoring.decoder_mlm`),
a share of the tokens is replaced by the mask token, and the loss is the cross-entropy of
each masked token predicted from the hidden state one position before it. Only a LoRA
delta of the attention and MLP projections is trained (PEFT), so what ships is a few MB and
the base weights stay the packaged ones.

Batches: each row of ``seq_len`` tokens packs whole documents (a random window of a long
one), each after the start token, with attention kept inside its document. Each document
is masked either token by token or in short spans (the GA's mutations refill spans), and a
share of documents is trained in prefix mode: a random first part (start token + prompt)
attends only to itself and is never masked, as `scoring.decoder_mlm`'s prefix attention
scores. Everything a step draws comes from a generator seeded by (seed, step), so a step's
batch depends on nothing else: a resumed run is the run that was not interrupted.

Checkpoints (every ``checkpoint_every`` steps and at the end) hold the adapter, the AdamW
state (safetensors, no pickle) and ``state.json`` (step, config, log); each is written to a
temporary folder and renamed into place, so a kill leaves the previous one whole. The final
adapter folder is what `scoring.models` loads as a masked LM (``decoder_mlm.json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evolve.experiments.corpus import DEFAULT_SOURCES, Doc, load_corpus
from evolve.experiments.mlm_eval import HeldOut, causal_scores, heldout_set, masked_scores
from scoring.decoder_mlm import (
    MASK_TOKEN,
    START_TOKEN,
    DecoderMLMSpec,
    attention_mask_4d,
    prepare_tokenizer,
)
from scoring.errors import UserError
from scoring.models import DEFAULT_CAUSAL, LoadedModel

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKPOINT = "checkpoint"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
Progress = Callable[[int, int, dict[str, Any]], None]  # (steps done, steps, latest numbers)


@dataclass(frozen=True)
class AdaptConfig:
    """Everything that defines an adapter's training; stored in its checkpoint and card.

    Each field's `metadata["help"]` says what it sets and why its default is what it is;
    `evolve adapt-mlm` makes its options from them.
    """

    base: str = field(
        default=DEFAULT_CAUSAL,
        metadata={"help": "Causal LM to adapt (preset, folder or hub id): the packaged one."},
    )
    steps: int = field(
        default=1000,
        metadata={
            "help": "Optimiser steps: ~1M training tokens at the default batch, what the "
            "shipped smollm2-mlm had (docs/smollm2-mlm.md); dev numbers still improved "
            "slowly there, and a larger --steps on the same --out extends the same run."
        },
    )
    batch_size: int = field(
        default=8, metadata={"help": "Rows per step: 8 x 128 tokens fits a CPU step in seconds."}
    )
    seq_len: int = field(
        default=128,
        metadata={
            "help": "Tokens per row (documents packed): longer than the GA's prompt + "
            "continuation, so it sees the lengths it will score."
        },
    )
    mask_rate: float = field(
        default=0.2,
        metadata={"help": "Share of maskable tokens masked: 20% as in LLM2Vec's MNTP."},
    )
    span_share: float = field(
        default=0.5,
        metadata={
            "help": "Share of documents masked in spans (1-5 tokens) rather than token by "
            "token: the GA refills spans."
        },
    )
    prefix_share: float = field(
        default=0.25,
        metadata={
            "help": "Share of documents trained with prefix attention (a prompt that sees "
            "only itself), so the prefix-cached scoring mode is a trained one too."
        },
    )
    lr: float = field(
        default=2e-4,
        metadata={"help": "AdamW learning rate: a usual LoRA rate (higher than full fine-tuning)."},
    )
    warmup: int = field(
        default=50,
        metadata={
            "help": "Steps of linear warm-up, then constant: constant so that a run can be "
            "extended with more steps and stay the same run."
        },
    )
    lora_r: int = field(
        default=16,
        metadata={
            "help": "LoRA rank on every attention and MLP projection: 16 keeps the fp32 "
            "adapter under 20 MB."
        },
    )
    lora_alpha: int = field(
        default=32, metadata={"help": "LoRA scale numerator (alpha / r = 2, PEFT's usual)."}
    )
    sources: tuple[str, ...] = field(
        default=DEFAULT_SOURCES,
        metadata={"help": "Corpus sources to train on (evolve.experiments.corpus)."},
    )
    weights: tuple[float, ...] = field(
        default=(0.45, 0.3, 0.08, 0.1, 0.07),
        metadata={
            "help": "Sampling weight of each source, in the order of `sources`: prose and "
            "verse first; WordNet's 2.4M tokens of glosses would otherwise dominate."
        },
    )
    eval_every: int = field(
        default=100,
        metadata={"help": "Steps between dev evaluations (and at step 0 and the end)."},
    )
    dev_positions: int = field(
        default=256,
        metadata={"help": "Dev positions per evaluation: the same ones every time (paired)."},
    )
    checkpoint_every: int = field(
        default=25,
        metadata={"help": "Steps between checkpoints: a kill loses at most this many steps."},
    )
    bf16: bool = field(
        default=True,
        metadata={
            "help": "Train under bfloat16 autocast (2x faster on CPUs with bf16 units); "
            "the adapter and optimiser stay fp32."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of every draw (batches, LoRA init)."})

    def validate(self) -> AdaptConfig:
        for name in ("steps", "batch_size", "lora_r", "lora_alpha", "eval_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1")
        if self.checkpoint_every < 1 or self.dev_positions < 1 or self.warmup < 0:
            raise UserError("checkpoint-every and dev-positions must be >= 1, warmup >= 0")
        if self.seq_len < 16:
            raise UserError(f"seq-len must be at least 16, got {self.seq_len}")
        for name in ("mask_rate", "span_share", "prefix_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{name.replace('_', '-')} must be within [0, 1], got {value}")
        if self.mask_rate == 0:
            raise UserError("mask-rate must be more than 0")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise UserError(f"lr must be more than 0, got {self.lr}")
        if len(self.weights) != len(self.sources):
            raise UserError(
                f"{len(self.weights)} weights for {len(self.sources)} sources: give one each"
            )
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise UserError("source weights must be >= 0 and not all 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AdaptConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known
        }
        return cls(**values)


# -- data --------------------------------------------------------------------------------------


@dataclass
class TokenDocs:
    """The training documents of each source as token-id arrays."""

    by_source: list[list[np.ndarray]]
    weights: np.ndarray  # normalised, one per source
    start_id: int
    mask_id: int
    pad_id: int

    @classmethod
    def build(
        cls, tokenizer: Any, docs: Sequence[Doc], sources: Sequence[str], weights: Sequence[float]
    ) -> TokenDocs:
        by_name: dict[str, list[str]] = {s: [] for s in sources}
        for d in docs:
            by_name[d.source].append(d.text)
        out: list[list[np.ndarray]] = []
        for s in sources:
            if not by_name[s]:
                raise UserError(f"corpus source {s!r} has no training text")
            ids = tokenizer(by_name[s], add_special_tokens=False)["input_ids"]
            out.append([np.asarray(x, dtype=np.int64) for x in ids if x])
        w = np.asarray(weights, dtype=np.float64)
        return cls(
            by_source=out,
            weights=w / w.sum(),
            start_id=int(tokenizer.convert_tokens_to_ids(START_TOKEN)),
            mask_id=int(tokenizer.convert_tokens_to_ids(MASK_TOKEN)),
            pad_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        )


@dataclass
class Batch:
    ids: torch.Tensor  # [B, L] input with masks
    mask: torch.Tensor  # [B, 1, L, L] bool attention
    rows: torch.Tensor  # [M] row of each masked position
    cols: torch.Tensor  # [M] its column
    targets: torch.Tensor  # [M] the true token there

    @property
    def n_masked(self) -> int:
        return int(self.targets.numel())


def make_batch(data: TokenDocs, config: AdaptConfig, step: int) -> Batch:
    """The batch of ``step``: a pure function of (seed, step) and the data."""
    rng = np.random.default_rng([config.seed, step])
    size, width = config.batch_size, config.seq_len
    ids = np.full((size, width), data.pad_id, dtype=np.int64)
    keep = np.zeros((size, width), dtype=bool)
    segments = np.zeros((size, width), dtype=np.int64)
    prompt = np.zeros((size, width), dtype=bool)
    masked = np.zeros((size, width), dtype=bool)
    for b in range(size):
        pos, seg = 0, 1
        while width - pos >= 8:  # fewer free positions than that: leave them as padding
            docs = data.by_source[int(rng.choice(len(data.weights), p=data.weights))]
            doc = docs[int(rng.integers(len(docs)))]
            room = width - pos - 1
            if len(doc) > room:
                first = int(rng.integers(len(doc) - room + 1))
                doc = doc[first : first + room]
            n = len(doc)
            ids[b, pos] = data.start_id
            ids[b, pos + 1 : pos + 1 + n] = doc
            keep[b, pos : pos + 1 + n] = True
            segments[b, pos : pos + 1 + n] = seg
            n_prompt = 0
            if n >= 4 and rng.random() < config.prefix_share:
                n_prompt = int(rng.integers(1, n // 2 + 1))
                prompt[b, pos : pos + 1 + n_prompt] = True
            for c in _masked_cols(rng, n - n_prompt, config):
                masked[b, pos + 1 + n_prompt + c] = True
            pos += 1 + n
            seg += 1
    rows, cols = np.nonzero(masked)
    targets = ids[rows, cols].copy()
    ids[masked] = data.mask_id
    t_keep = torch.from_numpy(keep)
    t_prompt = torch.from_numpy(prompt)
    mask = attention_mask_4d(t_keep, torch.from_numpy(segments), t_prompt if prompt.any() else None)
    return Batch(
        ids=torch.from_numpy(ids),
        mask=mask,
        rows=torch.from_numpy(rows),
        cols=torch.from_numpy(cols),
        targets=torch.from_numpy(targets),
    )


def _masked_cols(rng: np.random.Generator, n: int, config: AdaptConfig) -> list[int]:
    """Which of ``n`` maskable positions to mask: token by token or in spans of 1-5."""
    if n <= 0:
        return []
    want = max(1, int(round(config.mask_rate * n)))
    if rng.random() >= config.span_share:
        return sorted(int(c) for c in rng.choice(n, size=want, replace=False))
    chosen: set[int] = set()
    while len(chosen) < want:
        span = min(int(rng.geometric(0.4)), 5, want - len(chosen))
        start = int(rng.integers(n - span + 1))
        chosen.update(range(start, start + span))
    return sorted(chosen)


# -- model -------------------------------------------------------------------------------------


def lora_model(base: torch.nn.Module, config: AdaptConfig) -> Any:
    """``base`` (changed in place) with fresh LoRA layers; only they are trainable."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)  # LoRA's A matrices are drawn here
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,  # dropout would make the update depend on more than (seed, step)
        target_modules=list(LORA_TARGETS),
        bias="none",
    )
    return get_peft_model(base, lora)


def masked_loss(peft_model: Any, batch: Batch, bf16: bool) -> torch.Tensor:
    """Mean cross-entropy of the masked tokens, each from the hidden state before it."""
    decoder = peft_model.base_model.model.model
    head = peft_model.base_model.model.lm_head
    device = next(peft_model.parameters()).device
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        hidden = decoder(
            input_ids=batch.ids.to(device), attention_mask=batch.mask.to(device)
        ).last_hidden_state
        picked = hidden[batch.rows.to(device), batch.cols.to(device) - 1]
        logits = head(picked)
    return torch.nn.functional.cross_entropy(logits.float(), batch.targets.to(device))


def lr_at(config: AdaptConfig, step: int) -> float:
    if config.warmup and step <= config.warmup:
        return config.lr * step / config.warmup
    return config.lr


# -- checkpoints -------------------------------------------------------------------------------


def save_checkpoint(
    out: Path,
    peft_model: Any,
    optimiser: torch.optim.Optimizer,
    state: dict[str, Any],
    config: AdaptConfig,
) -> None:
    """Adapter + AdamW state + ``state.json`` into ``out/checkpoint``, whole or not at all.

    The checkpoint is also a loadable masked LM (``--mlm OUT/checkpoint``), so a long run
    can be tried at any checkpoint while it goes on."""
    from safetensors.torch import save_file

    final = out / CHECKPOINT
    tmp = out / f".{CHECKPOINT}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    evals = [row for row in state.get("log", []) if row.get("kind") == "eval"]
    write_adapter(tmp, peft_model, config, {"steps": state["step"], "dev": evals})
    tensors: dict[str, torch.Tensor] = {}
    names = {id(p): n for n, p in peft_model.named_parameters() if p.requires_grad}
    steps: dict[str, float] = {}
    for group in optimiser.param_groups:
        for p in group["params"]:
            st = optimiser.state.get(p)
            if not st:
                continue
            name = names[id(p)]
            tensors[f"{name}::exp_avg"] = st["exp_avg"].detach().contiguous()
            tensors[f"{name}::exp_avg_sq"] = st["exp_avg_sq"].detach().contiguous()
            steps[name] = float(st["step"])
    save_file(tensors, str(tmp / OPTIMIZER_FILE))
    (tmp / STATE_FILE).write_text(json.dumps({**state, "optimizer_steps": steps}))
    old = out / f".{CHECKPOINT}.old{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def read_state(out: Path) -> dict[str, Any] | None:
    path = out / CHECKPOINT / STATE_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise UserError(f"{path} is not an adapt-mlm checkpoint")
    return state


def load_checkpoint(out: Path, peft_model: Any, optimiser: torch.optim.Optimizer) -> None:
    """Put the checkpoint's adapter weights and AdamW state into a fresh model/optimiser."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = out / CHECKPOINT
    try:
        weights = load_file(str(folder / "adapter_model.safetensors"))
        moments = load_file(str(folder / OPTIMIZER_FILE))
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"cannot read the checkpoint in {folder}: {exc}") from exc
    set_peft_model_state_dict(peft_model, weights)
    state = json.loads((folder / STATE_FILE).read_text())
    steps = state.get("optimizer_steps", {})
    for name, p in peft_model.named_parameters():
        if not p.requires_grad or f"{name}::exp_avg" not in moments:
            continue
        optimiser.state[p] = {
            "step": torch.tensor(float(steps.get(name, 0.0))),
            "exp_avg": moments[f"{name}::exp_avg"].clone(),
            "exp_avg_sq": moments[f"{name}::exp_avg_sq"].clone(),
        }


def write_adapter(folder: Path, peft_model: Any, config: AdaptConfig, card: dict[str, Any]) -> None:
    """The PEFT adapter files and ``decoder_mlm.json`` (with ``card``) into ``folder``."""
    peft_model.save_pretrained(str(folder))
    # PEFT records the folder the base was loaded from (a path of this machine); the spec's
    # base name is what loading uses, so the adapter's config names the same.
    peft_config = folder / "adapter_config.json"
    raw = json.loads(peft_config.read_text())
    raw["base_model_name_or_path"] = config.base
    peft_config.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    DecoderMLMSpec(base=config.base, training={"config": config.to_dict(), **card}).write(folder)


def export_adapter(out: Path, peft_model: Any, config: AdaptConfig, card: dict[str, Any]) -> Path:
    """The loadable adapter folder ``out/adapter``: PEFT files + ``decoder_mlm.json``."""
    final = out / "adapter"
    tmp = out / f".adapter.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_adapter(tmp, peft_model, config, card)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


# -- training ----------------------------------------------------------------------------------


@dataclass
class AdaptResult:
    out: Path
    step: int
    interrupted: bool
    log: list[dict[str, Any]]
    seconds: float  # training time over every session of the run
    model: Any  # the PEFT model (base weights + LoRA layers)
    tokenizer: Any
    train_tokens: dict[str, int]  # training tokens per source

    @property
    def finished(self) -> bool:
        return not self.interrupted


def train_adapter(
    base: LoadedModel,
    config: AdaptConfig,
    out: Path,
    progress: Progress | None = None,
) -> AdaptResult:
    """Train (or resume, when ``out`` holds a checkpoint of the same config) the adapter.

    ``base`` must be a fresh copy (`scoring.models.load_fresh`): its model gets the LoRA
    layers. The dev numbers (`dev_numbers`) are logged at step 0, every ``eval_every`` steps
    and at the end. Ctrl-C returns with ``interrupted=True``; a resume starts from the last
    checkpoint, and gives the run that was not interrupted.
    """
    config.validate()
    tokenizer = prepare_tokenizer(base.tokenizer, DecoderMLMSpec(base=config.base))
    out.mkdir(parents=True, exist_ok=True)
    state = read_state(out)
    if state is not None:
        stored = AdaptConfig.from_dict(state.get("config", {})).to_dict()
        differs = sorted(
            k for k, v in config.to_dict().items() if k != "steps" and stored.get(k) != v
        )
        if differs:
            raise UserError(
                f"{out} holds a checkpoint of another configuration ({', '.join(differs)} "
                "differ): use a new --out, or the same options"
            )
    docs = load_corpus("train", config.sources)
    data = TokenDocs.build(tokenizer, docs, config.sources, config.weights)
    dev = heldout_set(tokenizer, "dev", config.dev_positions, config.sources)
    peft_model = lora_model(base.model, config)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    log: list[dict[str, Any]] = []
    step = 0
    seconds = 0.0
    if state is not None:
        load_checkpoint(out, peft_model, optimiser)
        step = int(state["step"])
        log = list(state.get("log", []))
        seconds = float(state.get("seconds", 0.0))

    def checkpoint() -> None:
        save_checkpoint(
            out,
            peft_model,
            optimiser,
            {"step": step, "config": config.to_dict(), "log": log, "seconds": seconds},
            config,
        )

    def evaluate() -> None:
        peft_model.eval()
        found = dev_numbers(peft_model, dev, data.mask_id, config.bf16)
        peft_model.train()
        log.append({"kind": "eval", "step": step, **found})

    if step == 0:
        evaluate()
    latest: dict[str, Any] = {}
    interrupted = False
    try:
        while step < config.steps:
            t0 = time.perf_counter()
            batch = make_batch(data, config, step + 1)
            for group in optimiser.param_groups:
                group["lr"] = lr_at(config, step + 1)
            loss = masked_loss(peft_model, batch, config.bf16)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            took = time.perf_counter() - t0
            seconds += took
            value = loss.item()
            log.append(
                {
                    "kind": "step",
                    "step": step,
                    "loss": value,
                    "masked": batch.n_masked,
                    "seconds": round(took, 3),
                }
            )
            latest["loss"] = value
            if step % config.eval_every == 0 or step == config.steps:
                evaluate()
                latest.update({k: v for k, v in log[-1].items() if k.startswith("dev_")})
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint()
            if progress is not None:
                progress(step, config.steps, dict(latest))
    except KeyboardInterrupt:  # the last checkpoint stands: resuming repeats what followed it
        interrupted = True
    return AdaptResult(
        out=out,
        step=step,
        interrupted=interrupted,
        log=log,
        seconds=seconds,
        model=peft_model,
        tokenizer=tokenizer,
        train_tokens={
            name: int(sum(len(d) for d in docs_))
            for name, docs_ in zip(config.sources, data.by_source, strict=True)
        },
    )


def dev_numbers(peft_model: Any, held: HeldOut, mask_id: int, bf16: bool) -> dict[str, float]:
    """Masked-token log-prob and top-1 of the training model on the dev positions."""
    inner = peft_model.base_model.model
    return masked_scores(inner.model, inner.lm_head, held, mask_id, bf16=bf16).summary("dev_")


def heldout_numbers(result: AdaptResult, positions: int, sources: Sequence[str]) -> dict[str, Any]:
    """The card's held-out numbers (test split, fp32): the adapted model masked, and the
    base causal LM (adapter off) from the left context, at the same positions."""
    held = heldout_set(result.tokenizer, "test", positions, sources)
    model = result.model
    model.eval()
    inner = model.base_model.model
    mask_id = int(result.tokenizer.convert_tokens_to_ids(MASK_TOKEN))
    masked = masked_scores(inner.model, inner.lm_head, held, mask_id)
    with model.disable_adapter():
        causal = causal_scores(inner, held)
    return {
        "texts": len(held.seqs),
        **masked.summary("mlm_"),
        **causal.summary("causal_"),
        "gain_nats_per_token": masked.summary("")["logprob"] - causal.summary("")["logprob"],
    }
