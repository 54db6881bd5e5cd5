"""The environment index built during the run (auditor/resolve/ahead.py): derive takes it only
when it was built for the same environment and nothing was installed or removed since."""

from __future__ import annotations

import os
from pathlib import Path

from auditor.resolve import Environment, index_environment
from auditor.resolve.ahead import IndexAhead
from tests.envs import add_dist, make_env, site_of


def _kernel(env: Environment) -> dict:
    """The kernel side's `kernel` record naming `env` (the fields Environment reads)."""
    return {"executable": env.executable, "version": env.version, "prefix": env.prefix,
            "base_prefix": env.base_prefix, "path": list(env.paths), "stdlib": list(env.stdlib),
            "markers": env.markers}


def test_the_index_built_ahead_is_taken_and_owns_what_a_fresh_one_owns(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    add_dist(site_of(tmp_path), "alpha", "1.0", ["alpha/__init__.py"])
    ahead = IndexAhead(["flo-backpack"])
    ahead.start(_kernel(env))
    env_again = Environment.from_kernel_record(_kernel(env))
    index = ahead.take(env_again, ["flo-backpack"])
    assert index is not None
    owner = index.owner(str(site_of(tmp_path) / "alpha" / "__init__.py"))
    fresh = index_environment(env_again).owner(str(site_of(tmp_path) / "alpha" / "__init__.py"))
    assert owner is not None and fresh is not None and owner.dist.name == fresh.dist.name


def test_a_package_installed_during_the_run_makes_derive_index_again(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    add_dist(site_of(tmp_path), "alpha", "1.0", ["alpha/__init__.py"])
    ahead = IndexAhead()
    ahead.start(_kernel(env))
    ahead.take(env)  # built
    site = site_of(tmp_path)
    before = os.stat(site).st_mtime_ns
    add_dist(site, "beta", "2.0", ["beta/__init__.py"])  # a cell's `%pip install beta`
    os.utime(site, ns=(before + 1_000_000, before + 1_000_000))  # coarse clocks: move it
    assert ahead.take(env) is None


def test_another_environment_or_exclusion_is_not_served(tmp_path: Path) -> None:
    env = make_env(tmp_path / "a")
    other = make_env(tmp_path / "b")
    ahead = IndexAhead(["flo-backpack"])
    ahead.start(_kernel(env))
    assert ahead.take(other, ["flo-backpack"]) is None
    assert ahead.take(env, []) is None
    assert ahead.take(env, ["flo-backpack"]) is not None


def test_an_incomplete_kernel_record_starts_nothing(tmp_path: Path) -> None:
    ahead = IndexAhead()
    ahead.start({"pid": 1})  # no executable, no path
    assert ahead.take(make_env(tmp_path)) is None
