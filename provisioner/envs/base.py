"""What an environment is made from, how it is keyed, and the one interface env builders share.

An `EnvRequest` is everything that decides an environment's content: the pins of the spec, the
python version asked for, the interpreter it is built on, the roles it serves and the bootstrap
packages those roles need. Its `key` (sha256 of the canonical form) names the cached folder, so
equal requests share one environment and any change builds a new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from auditor.backpack.environment import EnvSpec, Pin
from auditor.common.errors import FloError

from .interpreters import Interpreter

# Bumped when the layout or content of built environments changes, so old caches are not reused.
FORMAT_VERSION = 1

# What each role needs besides the notebook's own pins: the kernel for the manager, the Dask
# worker and task (de)serialisation for both.
BOOTSTRAP = {
    "manager": ("ipykernel", "distributed", "cloudpickle"),
    "worker": ("distributed", "cloudpickle"),
    "lab": ("jupyterlab",),  # the manager of an interactive `flo-run BP` (with "manager")
}


class EnvBuildError(FloError):
    """An environment could not be built from its spec; the message names the failing pins."""


def bootstrap_for(roles: tuple[str, ...]) -> tuple[str, ...]:
    """The union of the bootstrap packages of `roles`, sorted."""
    return tuple(sorted({name for role in roles for name in BOOTSTRAP[role]}))


def canonical_spec(spec: EnvSpec) -> dict:
    """The part of a spec that decides what gets installed, in a stable order."""
    return {
        "python": spec.python,
        "pins": [[key, pin.name, pin.version, pin.source, pin.channel]
                 for key, pin in sorted(spec.pins.items())],
    }


@dataclass(frozen=True)
class EnvRequest:
    """One environment to have: a spec, on an interpreter, for one or more roles."""

    spec: EnvSpec
    interpreter: Interpreter
    roles: tuple[str, ...]
    builder: str = "uv"

    @property
    def bootstrap(self) -> tuple[str, ...]:
        return bootstrap_for(self.roles)

    @property
    def pins(self) -> list[Pin]:
        return [self.spec.pins[k] for k in sorted(self.spec.pins)]

    def canonical(self) -> dict:
        interp = self.interpreter
        # Channels only decide what a conda solve installs; venv builders ignore them.
        channels = {"channels": list(self.spec.channels)} if self.builder == "conda" else {}
        return {
            **channels,
            "format": FORMAT_VERSION,
            "builder": self.builder,
            "spec": canonical_spec(self.spec),
            "interpreter": {"version": interp.version, "implementation": interp.implementation,
                            "platform": interp.platform, "abiflags": interp.abiflags},
            "roles": sorted(self.roles),
            "bootstrap": list(self.bootstrap),
        }

    @property
    def key(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class BuiltEnv:
    """An environment ready to use, and how it was obtained."""

    roles: tuple[str, ...]
    path: Path
    key: str
    python: str  # the interpreter version inside
    from_cache: bool
    seconds: float
    waited: float = 0.0  # time spent waiting for another process building the same key
    installed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    builder: str = ""  # the registered name of the builder that made it ("uv", "conda")

    @property
    def python_path(self) -> Path:
        return self.path / "bin" / "python"

    def to_dict(self) -> dict:
        return {"roles": list(self.roles), "path": str(self.path), "key": self.key,
                "python": self.python, "from_cache": self.from_cache,
                "seconds": round(self.seconds, 3), "waited": round(self.waited, 3),
                "installed": self.installed, "notes": self.notes, "builder": self.builder}


@dataclass
class BuildOutcome:
    """What a builder put into an environment: {distribution: version}, and remarks for people."""

    installed: dict[str, str]
    notes: list[str] = field(default_factory=list)
    python: str | None = None  # the interpreter version inside, when the builder chose it


class EnvBuilder:
    """A way to make an environment folder from a request. Subclasses write `build`."""

    name = ""
    # A relocatable environment still works after its folder is renamed, so the cache builds
    # it in a temporary folder and renames it into place; any other is built at its final path.
    relocatable = True

    def build(self, request: EnvRequest, target: Path) -> BuildOutcome:
        """Create the environment at `target` (absent beforehand). When `relocatable`, it must
        still work after `target` is renamed to its final path."""
        raise NotImplementedError


_BUILDERS: dict[str, type[EnvBuilder]] = {}


def register(cls: type[EnvBuilder]) -> type[EnvBuilder]:
    _BUILDERS[cls.name] = cls
    return cls


def get_builder(name: str) -> EnvBuilder:
    """The env builder registered under `name` ("uv", "pip", "conda")."""
    if name not in _BUILDERS:
        known = ", ".join(sorted(_BUILDERS))
        raise FloError(f"unknown environment builder {name!r}; known: {known}")
    return _BUILDERS[name]()
