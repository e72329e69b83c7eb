"""User-facing errors: each names the problem and the fix, printed as one line by the CLI."""
from __future__ import annotations


class FacetrainError(Exception):
    """An error caused by the user's input, with a suggested fix."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class ConfigError(FacetrainError):
    """A configuration value is unknown, missing or inconsistent."""


class DataError(FacetrainError):
    """A dataset file is missing, unreadable or corrupt."""


class ResumeError(FacetrainError):
    """A run cannot be resumed as asked."""


class ModelError(FacetrainError):
    """A checkpoint or exported model cannot be used as asked."""
