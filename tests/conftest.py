"""Shared fixtures. `lab` starts lab target servers on loopback and stops them at teardown:

`server = lab("cliff", cliff=30)` is a `LabServer` already listening at `server.url`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tuner.lab import LabServer, Profile
from tuner.lab import profile as lab_profile

LabFactory = Callable[..., LabServer]


@pytest.fixture
def lab() -> Iterator[LabFactory]:
    """`lab(profile="queue", **overrides) -> LabServer`, started; all are stopped at teardown.

    `profile` is a profile name (overrides change its numbers) or a `Profile`.
    """
    servers: list[LabServer] = []

    def start(profile: Profile | str = "queue", **overrides: Any) -> LabServer:
        if isinstance(profile, Profile):
            chosen = dataclasses.replace(profile, **overrides)
        else:
            chosen = lab_profile(profile, **overrides)
        server = LabServer(chosen).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
