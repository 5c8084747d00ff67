"""The Python scripts of ``docker/`` imported as modules, for tests.

The scripts import each other by file name (they run from that folder, in the image and in the
end-to-end test), so ``docker/`` goes on ``sys.path`` first.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.support.deployment import REPO

DOCKER = REPO / "docker"


def load(name: str) -> ModuleType:
    """Import ``docker/<name>.py`` (a fresh module object each time)."""
    if str(DOCKER) not in sys.path:
        sys.path.insert(0, str(DOCKER))
    spec = importlib.util.spec_from_file_location(f"docker_{name}", DOCKER / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {DOCKER / name}.py")
    module = importlib.util.module_from_spec(spec)
    # Registered first: dataclasses look their module up while the class is made.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
