"""The `evolve` command: a click group that gathers the commands of the cli modules.

The CLI only translates options into config dataclasses and domain errors into click
errors; every command module registers its commands in its `COMMANDS` list.
"""

from __future__ import annotations

import click

from cli import (
    adapt_cmds,
    amplify_cmds,
    baseline_cmds,
    export_cmds,
    label_cmds,
    run_cmds,
    scoring_cmds,
    serve_cmds,
    store_cmds,
    stunt_cmds,
)
from cli.common import ErrorTranslatingGroup


@click.group(cls=ErrorTranslatingGroup)
@click.version_option(package_name="mlm-evolve")
def cli() -> None:
    """Evolve text with a masked language model and log every individual to SQLite."""


_MODULES = (
    scoring_cmds,
    run_cmds,
    store_cmds,
    label_cmds,
    export_cmds,
    baseline_cmds,
    amplify_cmds,
    stunt_cmds,
    adapt_cmds,
    serve_cmds,
)
for _module in _MODULES:
    for _command in _module.COMMANDS:
        cli.add_command(_command)
