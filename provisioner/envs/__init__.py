"""Environments for a backpack's roles: interpreter matching, builders (uv, pip, conda), and the
cache."""

from __future__ import annotations

from . import conda, pip, uv  # noqa: F401  (register the builders)
from .base import BuiltEnv, EnvBuilder, EnvBuildError, EnvRequest, canonical_spec, get_builder
from .cache import EnvCache, default_cache_dir
from .conda import choose_builder, find_conda_tool, requested_interpreter
from .interpreters import Interpreter, InterpreterNotFound, find_interpreter

__all__ = ["BuiltEnv", "EnvBuilder", "EnvBuildError", "EnvCache", "EnvRequest", "Interpreter",
           "InterpreterNotFound", "canonical_spec", "choose_builder", "default_cache_dir",
           "find_conda_tool", "find_interpreter", "get_builder", "requested_interpreter"]
