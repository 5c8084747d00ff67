"""The Docker deployment as files: Dockerfiles and the Compose file read without a Docker engine.

Used by the static tests (``tests/unit/test_compose.py``) and the end-to-end test
(``tests/integration/test_docker_deployment.py``):

- ``Dockerfile``: the instructions (continuation lines joined, comments dropped), its
  ``FROM``, ``ENV``, ``COPY``, ``ENTRYPOINT`` and ``CMD`` as Docker reads them;
- ``compose()``, ``service_environment``, ``service_mounts``: the Compose file's services;
- ``container_environment``: what a service's process sees (the image's ``ENV``, then the
  service's ``environment``), the input of the image's configuration rules;
- ``ContainerTree``: a container's file tree laid out under a temporary folder (symlinks for
  what the Dockerfile copies and the Compose file mounts, folders for named volumes), with
  ``relocate`` moving the image's absolute paths into it;
- ``script_path_defaults``: the image paths the deployment's scripts default to
  (``${NAME:-/path}`` in shell, ``environ.get("NAME", "/path")`` in Python), so that the
  end-to-end test points every one of them into the tree.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
ORTHANC_DOCKERFILE = REPO / "docker" / "Dockerfile"
SYSLOG_DOCKERFILE = REPO / "docker" / "syslog" / "Dockerfile"
# Top-level folders of a container's file system that the deployment names.
_IMAGE_PATH = re.compile(
    r"(?<![\w./@-])/(?:etc|run|tmp|usr|var|startup|docker-entrypoint\.sh)(?=[/:\"',\s\]]|$)[^\s\"',\]:]*"
)


@dataclass(frozen=True, slots=True)
class Instruction:
    """One Dockerfile instruction: keyword in capitals, its arguments on one line."""

    keyword: str
    arguments: str

    def exec_form(self) -> list[str] | None:
        """The JSON array form (``["a", "b"]``) as a list, or ``None`` for the shell form."""
        text = self.arguments.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{self.keyword}: not a JSON array of strings: {text}")
        return value


class Dockerfile:
    """A Dockerfile's instructions as Docker reads them (continuations joined, comments dropped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.instructions: list[Instruction] = []
        pending = ""
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if pending and line.startswith("#"):
                continue  # comment lines inside a continued instruction are dropped
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            full = (pending + line).strip()
            pending = ""
            keyword, _, arguments = full.partition(" ")
            self.instructions.append(Instruction(keyword.upper(), arguments.strip()))
        if pending:
            raise ValueError(f"{path}: the last instruction ends with a line continuation")

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    @property
    def base_image(self) -> str:
        """The image of the (last) ``FROM``."""
        instruction = self.last("FROM")
        if instruction is None:
            raise ValueError(f"{self.path}: no FROM")
        return instruction.arguments.split()[0]

    @property
    def env(self) -> dict[str, str]:
        """Every ``ENV`` (``K=V`` pairs, or the old ``K V`` form), in order."""
        result: dict[str, str] = {}
        for instruction in self.all("ENV"):
            words = shlex.split(instruction.arguments)
            if words and "=" not in words[0]:
                result[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                name, sep, value = word.partition("=")
                if not sep:
                    raise ValueError(f"{self.path}: ENV word without '=': {word}")
                result[name] = value
        return result

    @property
    def copies(self) -> list[tuple[list[str], str]]:
        """Every ``COPY`` without ``--from``: (sources, destination)."""
        found = []
        for instruction in self.all("COPY"):
            words = [w for w in shlex.split(instruction.arguments) if not w.startswith("--")]
            if any(w.startswith("--from") for w in shlex.split(instruction.arguments)):
                continue
            *sources, destination = words
            found.append((sources, destination))
        return found

    def exec_form(self, keyword: str) -> list[str] | None:
        """``ENTRYPOINT`` or ``CMD`` of the last such instruction, in exec form (``None`` if unset)."""
        instruction = self.last(keyword)
        if instruction is None:
            return None
        value = instruction.exec_form()
        if value is None:
            raise ValueError(f"{self.path}: {keyword} in shell form (signals would not reach the process)")
        return value

    def cmd_after_entrypoint(self) -> list[str] | None:
        """The ``CMD`` in effect: Docker drops an inherited ``CMD`` when ``ENTRYPOINT`` is set, so
        only a ``CMD`` written after the last ``ENTRYPOINT`` counts."""
        entry = self.last("ENTRYPOINT")
        if entry is None:
            return self.exec_form("CMD")
        position = self.instructions.index(entry)
        later = [i for i in self.instructions[position + 1 :] if i.keyword == "CMD"]
        return later[-1].exec_form() if later else None


def compose() -> dict[str, Any]:
    """The Compose file, parsed."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as strings (mapping or ``KEY=VALUE`` list form)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = [item.partition("=") for item in raw]
        return {name: value for name, _, value in pairs}
    return {str(name): "" if value is None else str(value) for name, value in raw.items()}


@dataclass(frozen=True, slots=True)
class Mount:
    """One entry of a service's ``volumes``."""

    source: str
    target: str
    read_only: bool
    is_bind: bool


def service_mounts(service: Mapping[str, Any]) -> list[Mount]:
    """A service's mounts (short syntax ``source:target[:ro]`` or the long mapping form)."""
    mounts = []
    for item in service.get("volumes") or []:
        if isinstance(item, str):
            parts = item.split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        else:
            source, target, read_only = item["source"], item["target"], bool(item.get("read_only"))
        mounts.append(Mount(source, target, read_only, source.startswith(("./", "/", "../"))))
    return mounts


def service_dockerfile(service: Mapping[str, Any]) -> Dockerfile | None:
    """The Dockerfile a service builds, if it builds one."""
    build = service.get("build")
    if not isinstance(build, Mapping):
        return None
    return Dockerfile(REPO / build.get("context", ".") / build.get("dockerfile", "Dockerfile"))


def container_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """What a service's process sees: the ``ENV`` of the image it builds, then its ``environment``.

    (The base image's own ``ENV``, e.g. ``LANG``, is not known here and sets no configuration.)
    """
    dockerfile = service_dockerfile(service)
    env = dict(dockerfile.env) if dockerfile is not None else {}
    env.update(service_environment(service))
    return env


def compose_interpolations(text: str) -> list[str]:
    """``${VAR}`` references Compose would replace from the host (``$$`` escapes excluded)."""
    return re.findall(r"(?<!\$)\$\{([^}]+)\}", text)


_SHELL_DEFAULT = re.compile(r"\$\{([A-Z][A-Z0-9_]*):-(/[^}]*)\}")
_PYTHON_DEFAULT = re.compile(r"environ\.get\(\s*\"([A-Z][A-Z0-9_]*)\"\s*,\s*\"(/[^\"]*)\"\s*\)")


def script_path_defaults(paths: Iterable[Path]) -> dict[str, str]:
    """``{NAME: /default}`` for every environment variable the scripts default to an absolute path.

    Raises:
        ValueError: two scripts give the same variable different defaults.
    """
    found: dict[str, str] = {}
    for path in paths:
        text = path.read_text(encoding="utf-8")
        for name, default in [*_SHELL_DEFAULT.findall(text), *_PYTHON_DEFAULT.findall(text)]:
            if found.setdefault(name, default) != default:
                raise ValueError(f"{name} defaults to {found[name]} and to {default} ({path.name})")
    return found


def image_paths(value: str) -> list[str]:
    """The absolute container paths named in ``value`` (also inside JSON)."""
    return _IMAGE_PATH.findall(value)


class ContainerTree:
    """A container's file tree under ``root``: what the Dockerfile copies and the service mounts.

    Named volumes are folders of ``volumes`` (shared by every tree, as Docker shares a volume
    between the containers that mount it); bind mounts and copied files are symlinks to the
    repository. ``relocate`` prefixes a container path with ``root``.
    """

    def __init__(self, root: Path, volumes: Path) -> None:
        self.root = root
        self.volumes = volumes
        root.mkdir(parents=True, exist_ok=True)
        volumes.mkdir(parents=True, exist_ok=True)

    def relocate(self, container_path: str) -> str:
        """Where ``container_path`` (absolute) is in this tree."""
        if not container_path.startswith("/"):
            raise ValueError(f"not an absolute container path: {container_path!r}")
        return str(self.root) + container_path

    def relocate_value(self, value: str) -> str:
        """``value`` with every container path in it relocated (see ``image_paths``)."""
        return _IMAGE_PATH.sub(lambda m: self.relocate(m.group(0)), value)

    def link(self, container_path: str, source: Path) -> None:
        """Make ``container_path`` a symlink to ``source`` (a file the image or a mount provides)."""
        place = Path(self.relocate(container_path.rstrip("/")))
        place.parent.mkdir(parents=True, exist_ok=True)
        if place.is_symlink() or place.exists():
            raise FileExistsError(f"{container_path} is placed twice in {self.root}")
        place.symlink_to(source, target_is_directory=source.is_dir())

    def copy_from(self, dockerfile: Dockerfile) -> None:
        """Lay out what ``COPY`` puts in the image (symlinks to the repository)."""
        for sources, destination in dockerfile.copies:
            for source in sources:
                origin = REPO / source.rstrip("/")
                if destination.endswith("/") and not source.endswith("/"):
                    self.link(destination + Path(source).name, origin)
                else:
                    self.link(destination, origin)

    def mount(self, mounts: Iterable[Mount]) -> None:
        """Lay out a service's mounts (outer mounts first, so nested ones land inside them)."""
        for item in sorted(mounts, key=lambda m: m.target.count("/")):
            if item.is_bind:
                self.link(item.target, (REPO / item.source).resolve())
                continue
            volume = self.volumes / item.source
            volume.mkdir(parents=True, exist_ok=True)
            self.link(item.target, volume)

    def folder(self, container_path: str) -> Path:
        """Create a folder the image has (``/tmp``, ``/startup``, …) and return where it is."""
        place = Path(self.relocate(container_path))
        place.mkdir(parents=True, exist_ok=True)
        return place
