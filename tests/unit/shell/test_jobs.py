"""Waiting for a job from a callback: short sleeps first, then a bounded poll rate."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace
from typing import Any

import pytest

from orthanc_hardening.shell import jobs
from orthanc_hardening.shell.jobs import FIRST_POLL_SECONDS, JOB_POLL_SECONDS, poll_delays, wait_for_job


class JobOrthanc:
    """``GET /jobs/{id}``: ``Running`` for the first ``running`` polls, then ``final``."""

    def __init__(self, running: int, final: str = "Success") -> None:
        self.running = running
        self.final = final
        self.polls: list[str] = []

    def RestApiGet(self, uri: str) -> bytes:
        self.polls.append(uri)
        state = "Running" if len(self.polls) <= self.running else self.final
        return json.dumps({"ID": "j1", "State": state}).encode()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(jobs.time, "sleep", slept.append)
    return slept


def runtime_with(orthanc: JobOrthanc) -> Any:
    return SimpleNamespace(orthanc=orthanc)


def test_delays_double_from_the_first_up_to_the_poll_period_and_stay_there() -> None:
    delays = list(itertools.islice(poll_delays(), 12))
    assert delays[0] == FIRST_POLL_SECONDS
    assert all(b == min(a * 2, JOB_POLL_SECONDS) for a, b in itertools.pairwise(delays))
    assert delays[-4:] == [JOB_POLL_SECONDS] * 4


def test_a_first_delay_longer_than_the_period_is_the_period() -> None:
    assert list(itertools.islice(poll_delays(first=1.0, longest=0.02), 3)) == [0.02] * 3


def test_a_job_that_ends_quickly_is_seen_after_a_few_milliseconds(sleeps: list[float]) -> None:
    orthanc = JobOrthanc(running=2)
    state = wait_for_job(runtime_with(orthanc), "j1")
    assert state["State"] == "Success"
    assert orthanc.polls == ["/jobs/j1"] * 3
    assert sleeps == [0.001, 0.002, 0.004]


def test_a_long_job_is_polled_at_most_once_per_period(sleeps: list[float]) -> None:
    orthanc = JobOrthanc(running=200, final="Failure")
    state = wait_for_job(runtime_with(orthanc), "j1")
    assert state["State"] == "Failure"
    assert len(orthanc.polls) == 201
    assert max(sleeps) == JOB_POLL_SECONDS and sleeps.count(JOB_POLL_SECONDS) == 201 - 5


def test_the_timeout_returns_the_last_state_read(sleeps: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(itertools.count(0.0, 1.0))
    monkeypatch.setattr(jobs.time, "monotonic", lambda: next(clock))
    orthanc = JobOrthanc(running=10**6)
    state = wait_for_job(runtime_with(orthanc), "j1", timeout=3.0)
    assert state["State"] == "Running"
    assert len(orthanc.polls) == 4  # deadline 3 s from 0; the 4th poll's clock reads 4 s
