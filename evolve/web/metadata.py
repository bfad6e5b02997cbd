"""Datasette metadata for a run database: what every table, view and column means, and the
canned queries for the questions people ask of a run (their SQL is the store's,
`evolve.store.web_queries.CANNED_QUERIES`).

Datasette shows a table's `description` above it and a column's in the column header
menu; canned queries appear on the database page as forms with one field per `:parameter`.
A parameter left empty matches every run where the query says so (`:run = ''`).
"""

from __future__ import annotations

from typing import Any

from evolve.store.web_queries import CANNED_QUERIES

LICENSE_NOTE = "Written by mlm-evolve; every individual of every generation of every run."

TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "runs": (
        "One row per evolution run: its prompt, models, full config and progress.",
        {
            "id": "Run id (`evolve show ID`).",
            "created_at": "When the run started (UTC, ISO 8601).",
            "finished_at": "When it ended (UTC); empty while running.",
            "status": "running, finished, interrupted or failed.",
            "prompt": "The text every continuation follows.",
            "seed": "The one seed that drives every random number of the run.",
            "mlm": "Masked LM that proposes span refills (hub name, folder or preset).",
            "causal": "Causal LM used as judge and for baselines.",
            "fitness": "Name of the fitness (objective) the run maximises.",
            "config": "The full run config as JSON (every option, defaults included).",
            "generations_done": "Last generation written.",
            "best_individual_id": "Fittest individual, set when the run ends.",
            "versions": "Library versions the run used (JSON).",
            "error": "One-line error of a failed run.",
            "pid": "Process id of the process running it.",
            "host": "Host name of that process.",
            "process": "Token naming that process instance (boot id/pid namespace/start time).",
            "prompt_id": "The prompt's text id: the prefix_id of the run's scores.",
            "name": "A name given to the run (`evolve run --name`); not unique.",
            "tags": "Tags of the run as a JSON list (`evolve run --tag`, `evolve tag`).",
            "note": "A free-text note on the run (`evolve run --note`, `evolve note`).",
        },
    ),
    "texts": (
        "Every distinct text (continuations, prompts, baselines), stored once.",
        {
            "id": "First 32 hex digits of the SHA-256 of the text's UTF-8 bytes.",
            "text": "The text itself.",
        },
    ),
    "individuals": (
        "Every individual of every generation: its text, fitness, and the edit that made it.",
        {
            "id": "Individual id (`evolve lineage ID`).",
            "run_id": "The run it belongs to.",
            "generation": "Generation it was written in (0 = initial population).",
            "position": "Its place in that generation's population.",
            "text_id": "Its continuation (key into texts).",
            "token_ids": "The continuation as token ids of the run's representation model (JSON).",
            "n_tokens": "Number of those tokens.",
            "fitness": "Scalar fitness (higher is better).",
            "scores": "Per-scorer values as JSON (older databases; the scores table is the record).",
            "op": "Operator that made it: init, seed, elite, copy, mut_*, cx_*_point, mh_reject; "
            "'a+b' when two edits were applied in one generation.",
            "span_start": "First token of the edited span in the continuation (inclusive).",
            "span_end": "End of the edited span (exclusive).",
            "detail": "Operator details as JSON (crossover cut points, proposer, MH decision).",
            "created_at": "When it was written (UTC).",
            "objectives": "Objective values of a multi-objective (nsga2) run, JSON list.",
            "pareto_rank": "Non-dominated rank in its generation (0 = Pareto front; nsga2 only).",
            "island": "Its island (runs with --islands K > 1; NULL otherwise).",
        },
    ),
    "migrations": (
        "Island runs: each individual copied from one island into the next (DEAP migRing).",
        {
            "run_id": "The run.",
            "generation": "The generation before whose step the migration happened.",
            "individual_id": "The emigrant: an individual of the previous generation.",
            "from_island": "The island it left (and stays in).",
            "to_island": "The island that received a copy, in place of its worst.",
        },
    ),
    "parents": (
        "Who came from whom: one row per (child, parent) pair.",
        {
            "child_id": "The child individual.",
            "parent_id": "One of its parents (an individual of an earlier generation).",
            "position": "0 for the first parent, 1 for the second parent of a crossover.",
        },
    ),
    "generations": (
        "Per-generation statistics, and the state an exact resume needs.",
        {
            "run_id": "The run.",
            "generation": "Generation number.",
            "best": "Best fitness in the generation.",
            "mean": "Mean fitness.",
            "std": "Standard deviation of fitness.",
            "worst": "Lowest fitness.",
            "n_evaluated": "Individuals scored by a model in this generation.",
            "n_cache_hits": "Individuals whose score came from the cache.",
            "n_unique": "Distinct texts in the population.",
            "best_individual_id": "The fittest individual of the generation.",
            "seconds": "Wall time the generation took.",
            "rng_state": "Random number generator state after the generation (for resume).",
            "state": "Engine state after the generation (JSON, for resume).",
            "created_at": "When it was written (UTC).",
        },
    ),
    "run_texts": (
        "Every text a run scored (its individuals, texts undone by Metropolis-Hastings, "
        "offspring dropped by survivor selection), with the generation that first did.",
        {
            "run_id": "The run (runs.id).",
            "text_id": "The scored continuation (texts.id).",
            "generation": "The generation that scored it first.",
        },
    ),
    "scores": (
        "Model scores of texts, keyed by (text, prompt, scorer): the one record of scores.",
        {
            "text_id": "The scored text.",
            "prefix_id": "The prompt it was scored after ('' for none).",
            "scorer": "Scorer name, e.g. pll/original/<mlm> or causal/<causal LM>.",
            "total": "Total log-likelihood (nats) of the text's tokens.",
            "n_tokens": "Tokens scored, in the scorer's tokenizer.",
            "per_token": "Log-likelihood of each token (JSON list).",
            "created_at": "When it was scored (UTC).",
        },
    ),
    "baselines": (
        "Continuations written by ordinary decoding (greedy, beam, sampling) for comparison.",
        {
            "id": "Baseline id.",
            "run_id": "The run it was made for (empty for a standalone baseline).",
            "prompt_id": "The prompt (key into texts).",
            "method": "greedy, beam, sample or amplified.",
            "model": "The causal LM that wrote it.",
            "params": "Decoding parameters (JSON).",
            "seed": "Seed of a sampled text.",
            "text_id": "The continuation (key into texts).",
            "created_at": "When it was made (UTC).",
        },
    ),
    "experiments": (
        "Experiments over runs (comparisons, sweeps), with their config and summary.",
        {
            "id": "Experiment id.",
            "kind": "What kind of experiment.",
            "created_at": "When it started (UTC).",
            "status": "Its status.",
            "config": "Its config (JSON).",
            "summary": "Its summary (JSON).",
        },
    ),
    "experiment_rows": (
        "The result rows of each experiment, in order.",
        {
            "experiment_id": "The experiment.",
            "idx": "Row number.",
            "data": "The row (JSON).",
        },
    ),
    "_migrations": (
        "Schema migrations applied to this database, in order.",
        {
            "version": "Migration number.",
            "name": "Migration function name.",
            "applied_at": "When it was applied (UTC).",
        },
    ),
    "individual_texts": (
        "View: individuals with their continuation and the full text (prompt + continuation).",
        {
            "run_id": "The run.",
            "generation": "Generation.",
            "position": "Place in the population.",
            "id": "Individual id.",
            "fitness": "Fitness.",
            "op": "Operator that made it.",
            "span_start": "First edited token.",
            "span_end": "End of the edited span (exclusive).",
            "text": "The continuation.",
            "full_text": "Prompt followed by the continuation.",
        },
    ),
    "lineage": (
        "View: every (individual, ancestor, depth) pair; depth 0 is the individual itself.",
        {
            "individual_id": "The individual.",
            "ancestor_id": "One of its ancestors (or itself at depth 0).",
            "depth": "Generations of descent between them.",
        },
    ),
    "edits": (
        "View: each child with its operator, edited span and gain over its best parent.",
        {
            "child_id": "The child individual.",
            "run_id": "The run.",
            "generation": "Generation of the child.",
            "op": "Operator.",
            "span_start": "First edited token.",
            "span_end": "End of the edited span (exclusive).",
            "child_fitness": "The child's fitness.",
            "best_parent_fitness": "Fitness of its fittest parent.",
            "gain": "child_fitness - best_parent_fitness.",
            "n_parents": "1 for a mutation or copy, 2 for a crossover.",
        },
    ),
    "individual_scores": (
        "View: each individual's model scores from the scores table, one row per scorer.",
        {
            "individual_id": "The individual.",
            "run_id": "The run.",
            "generation": "Generation.",
            "scorer": "Scorer name.",
            "total": "Total log-likelihood (nats).",
            "n_tokens": "Tokens scored.",
            "mean": "total / n_tokens.",
        },
    ),
}

# The canned queries are the store's (their SQL is tested with the schema there).
QUERIES = CANNED_QUERIES


def metadata(database: str, allowed_hosts: list[str] | None = None) -> dict[str, Any]:
    """Datasette metadata for the run database Datasette calls `database`; `allowed_hosts`
    are the Host names the server answers besides localhost and IP addresses."""
    tables = {
        name: {"description": desc, "columns": dict(columns)}
        for name, (desc, columns) in TABLES.items()
    }
    return {
        "title": "mlm-evolve runs",
        "description": "Runs of mlm-evolve: every individual, its lineage and scores. "
        "Our pages: / (runs), /-/evolve/runs/ID, /-/evolve/individuals/ID.",
        "databases": {
            database: {
                "description": LICENSE_NOTE,
                "tables": tables,
                "queries": {name: dict(q, sql=q["sql"].strip()) for name, q in QUERIES.items()},
            }
        },
        "plugins": {"mlm-evolve": {"database": database, "allowed_hosts": allowed_hosts or []}},
    }
