"""The one exception type for bad user input, shared by every package.

Domain code raises `UserError` (or a subclass) with a one-line message; the CLI turns it
into a click usage error (exit code 2) so the user sees that line and never a traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: an unusable model, option, prompt, run id or file."""


class ModelLoadError(UserError):
    """A model name or folder that cannot be loaded as the requested kind."""
