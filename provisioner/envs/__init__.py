"""Environments for a backpack's roles: interpreter matching, builders (uv), and the cache."""

from __future__ import annotations

from . import pip, uv  # noqa: F401  (register the pip and uv builders)
from .base import BuiltEnv, EnvBuilder, EnvBuildError, EnvRequest, canonical_spec, get_builder
from .cache import EnvCache, default_cache_dir
from .interpreters import Interpreter, InterpreterNotFound, find_interpreter

__all__ = ["BuiltEnv", "EnvBuilder", "EnvBuildError", "EnvCache", "EnvRequest", "Interpreter",
           "InterpreterNotFound", "canonical_spec", "default_cache_dir", "find_interpreter",
           "get_builder"]
