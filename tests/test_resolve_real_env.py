"""The resolver against the project's real venv (fixture packages installed on purpose),
asked through its own interpreter, and `dpkg -S` on real system files."""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

import pytest

from auditor.resolve import Environment, dpkg_owners, index_environment

VENV_PYTHON = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"


@pytest.fixture(scope="module")
def venv():
    if not VENV_PYTHON.exists():
        pytest.skip(f"{VENV_PYTHON} is missing: create the project venv first")
    env = Environment.of_interpreter(str(VENV_PYTHON))
    site = next(p for p in env.paths if p.endswith("site-packages") and p.startswith(env.prefix))
    return env, index_environment(env, exclude_names=["flo-backpack"]), site


def _owner_name(index, path):
    found = index.owner(path)
    assert found is not None, f"nobody owns {path}"
    assert not found.metadata and found.dist is not None, found
    return found.dist.name


def test_interpreter_probe_describes_the_venv(venv):
    env, index, site = venv
    assert env.prefix == str(VENV_PYTHON.parent.parent)
    assert env.version.count(".") == 2 and env.markers["python_version"] == env.version[:4]
    assert any(d.endswith("python3.11") for d in env.stdlib)
    assert "" not in env.paths


def test_files_map_to_their_distributions(venv):
    env, index, site = venv
    (umath,) = glob.glob(os.path.join(site, "numpy", "_core", "_multiarray_umath.*.so"))
    assert _owner_name(index, umath) == "numpy"
    assert _owner_name(index, os.path.join(site, "sklearn", "__init__.py")) == "scikit-learn"
    assert _owner_name(index, os.path.join(site, "yaml", "__init__.py")) == "PyYAML"
    assert _owner_name(index, os.path.join(site, "dateutil", "parser", "_parser.py")) \
        == "python-dateutil"
    functools = os.path.join(site, "jaraco", "functools", "__init__.py")
    assert _owner_name(index, functools) == "jaraco.functools"
    assert index.owner(os.path.join(site, "jaraco")) is None


def test_metadata_and_stdlib(venv):
    env, index, site = venv
    numpy = index.get("numpy")
    found = index.owner(os.path.join(numpy.location, "METADATA"))
    assert found.metadata and found.dist == numpy
    stdlib_json = next(os.path.join(d, "json", "__init__.py") for d in env.stdlib
                        if os.path.exists(os.path.join(d, "json", "__init__.py")))
    assert index.owner(stdlib_json).stdlib
    assert index.owner(stdlib_json).dist is None
    assert index.owner(env.executable).stdlib
    assert index.owner(os.path.join(env.prefix, "pyvenv.cfg")).stdlib


def test_closures_pin_installed_versions(venv):
    env, index, site = venv
    closed, warnings = index.closure([index.get("scikit-learn")])
    pins = {d.key: d.version for d in closed}
    for name in ("scikit-learn", "numpy", "scipy", "joblib", "threadpoolctl"):
        assert pins[name] == index.get(name).version
    assert "pytest" not in pins  # only an extra ("tests") asks for it
    assert warnings == []
    closed, _ = index.closure([index.get("python-dateutil")])
    assert {d.key for d in closed} == {"python-dateutil", "six"}


def test_own_project_is_excluded(venv):
    env, index, site = venv
    assert index.get("flo-backpack") is None
    assert all(d.key != "flo-backpack" for d in index.distributions())


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is not installed")
def test_dpkg_owners_batches_and_follows_merged_usr():
    libc = glob.glob("/lib/x86_64-linux-gnu/libc.so.6") or glob.glob("/lib/*/libc.so.6")
    # Debian ships libc under /lib; merged /usr means the same file opens as /usr/lib/...
    usr_libc = ["/usr" + p for p in libc[:1] if os.path.exists("/usr" + p)]
    paths = ["/usr/bin/dpkg", "/no/such/file", sys.executable, *libc[:1], *usr_libc]
    owners = dpkg_owners(paths)
    assert owners["/usr/bin/dpkg"] == "dpkg"
    for path in libc[:1] + usr_libc:
        assert owners[path] == "libc6"
    assert "/no/such/file" not in owners


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is not installed")
def test_dpkg_answers_are_kept_while_its_database_is_unchanged(tmp_path, monkeypatch):
    """What dpkg said (owned, unowned, Essential) is answered again without asking it, from
    the answers file, until its database changes; a dpkg that fails is never taken to mean
    "unowned"."""
    from auditor.resolve.system import Answers, essential_packages

    admin = tmp_path / "dpkg"
    admin.mkdir()
    for name in ("status", "diversions"):
        if os.path.exists(f"/var/lib/dpkg/{name}"):
            shutil.copy2(f"/var/lib/dpkg/{name}", admin / name)
    kept = tmp_path / "cache" / "dpkg.json"
    paths = ["/usr/bin/dpkg", "/no/such/file", sys.executable]
    first = Answers(kept, str(admin))
    owners = dpkg_owners(paths, first)
    essential = essential_packages(owners.values(), first)
    first.save()
    assert owners["/usr/bin/dpkg"] == "dpkg" and "dpkg" in essential

    # A dpkg that only leaves a trace that it ran, and fails.
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("dpkg", "dpkg-query"):
        (fake / tool).write_text(f"#!/bin/sh\ntouch {tmp_path}/{tool}-ran\nexit 2\n")
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    again = Answers(kept, str(admin))
    assert dpkg_owners(paths, again) == owners
    assert essential_packages(owners.values(), again) == essential
    assert not list(tmp_path.glob("*-ran"))

    with open(admin / "status", "a") as status:  # a package installed or removed
        status.write("\n")
    changed = Answers(kept, str(admin))
    assert dpkg_owners(paths, changed) == {}
    assert (tmp_path / "dpkg-ran").exists()
    assert "/no/such/file" not in changed.owners  # dpkg failed: nothing is known of it


def test_module_names_resolve_by_search_path_like_the_import_system(venv, tmp_path):
    from auditor.resolve.modules import NOT_FOUND, ModuleOwners

    env, index, site = venv
    (tmp_path / "helper.py").write_text("X = 1\n")
    (tmp_path / "helper.cpython-311-x86_64-linux-gnu.so.txt").write_text("not a module\n")
    owners = ModuleOwners(index, [str(tmp_path), *env.paths], str(tmp_path))
    assert owners.owner("numpy.linalg") == "numpy"
    # an extension module alone at the top of site-packages: found by its `name.<tag>.so`
    assert glob.glob(os.path.join(site, "_cffi_backend.*.so"))
    assert owners.owner("_cffi_backend") == "cffi"
    assert owners.owner("helper") is None  # the notebook's own module, first on the path
    assert owners.owner("json") is None
    assert owners.owner("no_such_module_anywhere") == NOT_FOUND
