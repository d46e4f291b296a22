"""The installed healthsync version, read once from the package metadata.

`healthsync --version` prints it, the report footer shows it, and the score memo keys on it (another
release may score differently). A source tree that was never installed has no metadata: each caller
says what to show then.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed_version(default: str) -> str:
    """The version pip installed, or `default` when healthsync is not installed (a bare source tree)."""
    try:
        return version("healthsync")
    except PackageNotFoundError:
        return default
