"""The errors tuner raises, one root and a short tree.

    TunerError                  every error tuner raises on purpose
    ├── ConfigError             the config file is invalid; carries every problem found
    ├── UsageError              a command line that cannot be run (exit code 2)
    ├── StateError              a state file that cannot be read or written
    └── LabError                the lab server could not start or answer

`requests` exceptions never leave `fetch.py`: each becomes an `Outcome`
(`success`, `http_error`, `throttled`, `timeout`, `connection_error`,
`client_error`), and the controller only ever sees counts of them.
"""

from __future__ import annotations

from collections.abc import Sequence


class TunerError(Exception):
    """Root of every error tuner raises on purpose."""


class ConfigError(TunerError):
    """The config is invalid. `problems` holds one line per mistake, all found in one pass.

    Each line reads `FILE:LINE: path.to.key: rule: value`.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class UsageError(TunerError):
    """A command line that cannot be run as given."""


class StateError(TunerError):
    """A state file that cannot be read or written."""


class LabError(TunerError):
    """The lab server could not start or did not answer."""
