"""Placeholder: commands for this module are added by their issue."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
