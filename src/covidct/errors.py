"""Exceptions a user can cause. The CLI turns each into one line and a non-zero exit.

Every message names the file (where there is one) and the fix.
"""

from __future__ import annotations


class CovidCTError(Exception):
    """Base class of every error a user can cause; ``exit_code`` is what the CLI returns."""

    exit_code = 2


class InputError(CovidCTError):
    """The input cannot be read as a CT study (missing, corrupt, wrong modality, mixed series...)."""


class NotChestCTError(InputError):
    """The study was read, but it does not show lungs (e.g. an abdominal series)."""


class ModelError(CovidCTError):
    """A model folder is missing, corrupt or incompatible with this version of covidct."""


class ConfigError(CovidCTError):
    """Bad arguments or settings."""
