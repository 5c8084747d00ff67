"""Matching a storage read to its HTTP request, on the request's thread or on a loader thread."""

from __future__ import annotations

from orthanc_hardening.audit.event import Transport
from orthanc_hardening.identity import HttpRequest, Requester
from orthanc_hardening.shell.inflight import SCOPED_SECONDS, UNSCOPED_SECONDS, InFlightRequests


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request(user: str, uri: str = "/instances/x/file") -> HttpRequest:
    return HttpRequest("GET", uri, {}, {}, Requester(transport=Transport.REST, user=user))


def test_read_on_the_request_thread_is_that_request() -> None:
    registry = InFlightRequests(clock=Clock())
    alice = request("alice")
    registry.begin(1, alice)
    assert registry.for_read(1, "S1") == (1, alice)
    assert registry.on_thread(1) is alice


def test_read_on_a_loader_thread_is_the_request_whose_scope_holds_its_series() -> None:
    clock = Clock()
    registry = InFlightRequests(clock=clock)
    alice, bob = request("alice"), request("bob")
    registry.begin(1, alice)
    registry.set_scope(1, alice, ["S1"])
    clock.now += 1
    registry.begin(2, bob)
    registry.set_scope(2, bob, ["S2"])
    assert registry.for_read(99, "S1") == (1, alice)
    assert registry.for_read(99, "S2") == (2, bob)
    assert registry.for_read(99, "S3") is None


def test_request_that_reads_no_bytes_is_never_matched() -> None:
    registry = InFlightRequests(clock=Clock())
    registry.begin(1, request("alice", "/system"))
    assert registry.for_read(99, "S1") is None


def test_unscoped_request_takes_reads_no_scoped_request_claims() -> None:
    clock = Clock()
    registry = InFlightRequests(clock=clock)
    webdav, scoped = request("carol", "/webdav/x"), request("alice")
    registry.begin(1, webdav)
    registry.set_scope(1, webdav, None)
    registry.begin(2, scoped)
    registry.set_scope(2, scoped, ["S1"])
    assert registry.for_read(99, "S1") == (2, scoped)
    assert registry.for_read(99, "S9") == (1, webdav)
    clock.now += UNSCOPED_SECONDS + 1
    assert registry.for_read(99, "S9") is None
    assert registry.for_read(99, "S1") == (2, scoped)
    clock.now += SCOPED_SECONDS
    assert registry.for_read(99, "S1") is None


def test_next_request_on_a_thread_ends_the_previous_one() -> None:
    registry = InFlightRequests(clock=Clock())
    first, second = request("alice"), request("bob", "/system")
    registry.begin(1, first)
    registry.set_scope(1, first, ["S1"])
    registry.begin(1, second)
    registry.set_scope(1, first, ["S1"])  # a late scope for the ended request changes nothing
    assert registry.for_read(99, "S1") is None
