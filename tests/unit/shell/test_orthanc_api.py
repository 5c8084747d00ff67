"""Feature detection of the Python plugin and the pinning of registered callbacks."""

from __future__ import annotations

import gc
import weakref

from orthanc_hardening.shell import orthanc_api
from orthanc_hardening.shell.orthanc_api import Capabilities, PinnedOrthanc, unwrap
from tests.unit.fakes import FakeOrthanc


class Plugin42(FakeOrthanc):
    """A fake with the names Python plugin 4.2 added (the two-argument SendHttpStatus era)."""

    def RegisterMoveCallback2(self, *callbacks: object) -> None:
        pass


def test_plugin_40_capabilities() -> None:
    capabilities = Capabilities.detect(FakeOrthanc())
    assert not capabilities.two_argument_status
    assert not capabilities.storage_area_ranges and not capabilities.emit_audit_log


def test_plugin_42_takes_two_argument_status() -> None:
    assert Capabilities.detect(Plugin42()).two_argument_status


def test_registered_closure_outlives_every_other_reference() -> None:
    fake = FakeOrthanc()
    pinned = PinnedOrthanc(fake)

    def make() -> object:
        def callback(output: object, uri: str, **request: object) -> None:
            return None
        return callback

    callback = make()
    alive = weakref.ref(callback)
    pinned.RegisterRestCallback("/x", callback)
    assert fake.routes["/x"] is callback
    del callback
    fake.routes.clear()  # as the Python plugin does when Orthanc finalises it
    gc.collect()
    assert alive() is not None and alive() in orthanc_api._PINNED


def test_other_attributes_are_the_modules_own() -> None:
    fake = FakeOrthanc()
    pinned = PinnedOrthanc(fake)
    assert pinned.ChangeType is fake.ChangeType
    assert unwrap(pinned) is fake and unwrap(fake) is fake
