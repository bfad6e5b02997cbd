"""`evolve score` (PLL of texts under a masked LM, or with `--causal` their log-probability
under a causal LM) and `evolve models` (presets and status).

Translation only: options become `PLLScorer` / `CausalScorer` arguments, results become a
table or JSON.
Model loading errors are `UserError`s, which the group turns into one-line usage errors.
"""

from __future__ import annotations

import json

import click

from cli.tables import format_table
from scoring.causal import CausalScorer
from scoring.errors import UserError
from scoring.models import DEFAULT_CAUSAL, DEFAULT_MLM, load_causal, load_mlm, preset_status
from scoring.names import PLL_VARIANTS
from scoring.pll import PLLScorer

TEXT_WIDTH = 50  # score table: enough of each text to recognise it


def _join(prefix: str, text: str) -> str:
    """The text as it continues the prefix: a space between them unless one is there.

    Prefix and text are tokenised separately; byte-level BPE (RoBERTa) spells a word after a
    space differently, so without the space the text's first word would be glued on.
    """
    if prefix and text and not prefix[-1].isspace() and not text[0].isspace():
        return " " + text
    return text


@click.command()
@click.argument("texts", nargs=-1, required=True, metavar="TEXT...")
@click.option(
    "--mlm",
    "mlm_name",
    default=DEFAULT_MLM,
    show_default=True,
    help="Masked LM: a preset, a model folder or a hub id.",
)
@click.option(
    "--variant",
    type=click.Choice(PLL_VARIANTS),
    default="original",
    show_default=True,
    help="PLL variant: original (Salazar et al. 2020) or word_l2r (Kauf & Ivanova 2023).",
)
@click.option("--prefix", default="", help="Context before each text; it is not scored.")
@click.option("--per-token", is_flag=True, help="Also show each token's log-probability.")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast: faster, scores approximate.")
@click.option(
    "--causal",
    "causal_name",
    is_flag=False,
    flag_value=DEFAULT_CAUSAL,
    default=None,
    help=f"Score log p(text | prefix) under a causal LM instead (default {DEFAULT_CAUSAL}); "
    "put it after the texts, or write --causal=NAME.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def score(
    texts: tuple[str, ...],
    mlm_name: str,
    variant: str,
    prefix: str,
    per_token: bool,
    bf16: bool,
    causal_name: str | None,
    as_json: bool,
) -> None:
    """Pseudo-log-likelihood of each TEXT (nats): total, mean per token and token count;
    with --causal, the causal LM's log-probability of each TEXT after the prefix."""
    for i, text in enumerate(texts, 1):
        if not text.strip():
            raise UserError(f"text {i} is empty; give some words to score")
    scorer: PLLScorer | CausalScorer
    if causal_name is not None:
        if bf16:
            raise UserError("--bf16 is for PLL scoring; the causal scorer runs in fp32")
        lm = load_causal(causal_name)
        scorer = CausalScorer(lm)
        what, dtype = "causal log p(text | prefix)", "fp32"
    else:
        lm = load_mlm(mlm_name)
        scorer = PLLScorer(lm, variant=variant, dtype="bf16" if bf16 else "fp32")  # type: ignore[arg-type]
        what, dtype = f"PLL {variant}", scorer.dtype
    prefix_ids = scorer.encode(prefix) if prefix else []
    ids = [scorer.encode(_join(prefix, t)) for t in texts]
    for i, cont in enumerate(ids, 1):
        if not cont:
            raise UserError(f"text {i} has no tokens under {lm.name}'s tokenizer")
    results = scorer.score_ids(ids, prefix_ids)
    tokens = [lm.tokenizer.convert_ids_to_tokens(c) for c in ids]

    if as_json:
        out = {
            "model": lm.name,
            "scorer": scorer.name,
            "kind": "causal" if causal_name is not None else "pll",
            "variant": variant if causal_name is None else None,
            "dtype": dtype,
            "prefix": prefix,
            "results": [
                {
                    "text": text,
                    "total": r.total,
                    "mean": r.mean,
                    "n_tokens": r.n_tokens,
                    **(
                        {"tokens": toks, "token_logprobs": list(r.token_logprobs)}
                        if per_token
                        else {}
                    ),
                }
                for text, r, toks in zip(texts, results, tokens, strict=True)
            ],
        }
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return

    click.echo(
        format_table(
            ["#", "text", "total", "mean", "tokens"],
            [
                [i, text, r.total, r.mean, r.n_tokens]
                for i, (text, r) in enumerate(zip(texts, results, strict=True), 1)
            ],
            widths={"text": TEXT_WIDTH},
        )
    )
    if per_token:
        for i, (r, toks) in enumerate(zip(results, tokens, strict=True), 1):
            click.echo(f"\ntext {i}:")
            click.echo(
                format_table(["token", "logprob"], list(zip(toks, r.token_logprobs, strict=True)))
            )
    note = " (bf16: approximate)" if bf16 else ""
    click.echo(f"\n{what} under {lm.name}{note}; nats, higher is more plausible.")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (keys in README).")
def models(as_json: bool) -> None:
    """List the model presets and whether their weights are installed."""
    rows = preset_status()
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    click.echo(
        format_table(
            ["name", "kind", "status", "about"],
            [[r["name"], r["kind"], r["status"], r["about"]] for r in rows],
            widths={"status": None, "about": None},
        )
    )
    click.echo("\nAny other name is loaded as a model folder or a hub id (--mlm NAME).")


COMMANDS: list[click.Command] = [score, models]
