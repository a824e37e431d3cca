"""The one error type the importer raises: its message is for the user and names the file."""

from __future__ import annotations


class ModelImportError(Exception):
    """A file that cannot be imported, worded for the user: which file, what is wrong, what to do."""
