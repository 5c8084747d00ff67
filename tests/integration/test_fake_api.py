"""The unit tests' ``FakeOrthanc`` only uses names the real ``orthanc`` module has.

A probe script runs inside a real Orthanc (Python plugin 4.0) and dumps the module's public
names and enum values; every public name of the fake, and every enum value, must match.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.server import PYTHON_PLUGIN, free_port
from tests.unit.fakes import FakeOrthanc, FakeOutput

PROBE = '''
import json, orthanc
def enum_values(kind):
    return {n: getattr(kind, n) for n in dir(kind) if n.isupper()}
dump = {
    "module": sorted(n for n in dir(orthanc) if not n.startswith("_")),
    "output": sorted(n for n in dir(orthanc.RestOutput) if not n.startswith("_")),
    "ChangeType": enum_values(orthanc.ChangeType),
    "ResourceType": enum_values(orthanc.ResourceType),
    "MetricsType": enum_values(orthanc.MetricsType),
}
with open(%r, "w") as handle:
    json.dump(dump, handle)
raise SystemExit("probe done")
'''


def _public(kind: type) -> set[str]:
    return {name for name in vars(kind) if not name.startswith("_") and name[0].isupper()}


def test_fake_orthanc_matches_the_real_module(start_orthanc, tmp_path: Path) -> None:
    dump_path = tmp_path / "dump.json"
    script = tmp_path / "probe.py"
    script.write_text(PROBE % str(dump_path))
    server = start_orthanc(
        config={"Plugins": [PYTHON_PLUGIN], "PythonScript": str(script), "DicomPort": free_port()},
        plugin=False,
        expect_failure=True,
    )
    server.wait_exit(timeout=60)
    dump = json.loads(dump_path.read_text())

    assert _public(FakeOrthanc) <= set(dump["module"]), _public(FakeOrthanc) - set(dump["module"])
    assert _public(FakeOutput) <= set(dump["output"]), _public(FakeOutput) - set(dump["output"])
    for enum_name in ("ChangeType", "ResourceType", "MetricsType"):
        fake_enum = getattr(FakeOrthanc, enum_name)
        assert {m.name: m.value for m in fake_enum} == {
            name: value for name, value in dump[enum_name].items() if name in fake_enum.__members__
        }
        assert set(fake_enum.__members__) <= set(dump[enum_name])
