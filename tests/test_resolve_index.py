"""Ownership and closure on hand-built environment prefixes (tests/envs.py)."""

from __future__ import annotations

import os

from auditor.resolve import Environment, index_environment
from tests.envs import add_conda_package, add_dist, file_url, make_env, site_of, write


def test_record_files_pyc_and_metadata(tmp_path):
    env = make_env(tmp_path)
    site = site_of(tmp_path)
    info = add_dist(site, "alpha", "1.0", ["alpha/__init__.py", "alpha/_core.so", "alpha/w.pth",
                                          "alpha-extra.pth", "../../../bin/alpha-cli"])
    add_dist(site, "beta-pkg", "2.0", ["beta/__init__.py"])
    index = index_environment(env)
    alpha = index.get("ALPHA")
    assert alpha is not None and alpha.version == "1.0" and alpha.installer == "pip"
    assert alpha.requirement() == "alpha==1.0" and not alpha.local
    for rel in ("alpha/__init__.py", "alpha/_core.so",
                "alpha/__pycache__/__init__.cpython-311.pyc",
                "alpha/__pycache__/__init__.cpython-311.opt-1.pyc",
                "alpha/__pycache__/__init__.cpython-311.pyc.140234", "alpha/w.pth"):
        found = index.owner(str(site / rel))
        assert found is not None and found.dist == alpha and not found.metadata, rel
    script = index.owner(str(tmp_path / "bin" / "alpha-cli"))
    assert script is not None and script.dist == alpha
    for meta in (info / "METADATA", info / "entry_points.txt", site / "alpha-extra.pth"):
        found = index.owner(str(meta))
        assert found is not None and found.metadata and found.dist == alpha, meta
    assert index.get("beta_pkg").name == "beta-pkg"
    assert index.owner(str(site / "beta" / "__init__.py")).dist.name == "beta-pkg"


def test_lookup_through_symlinked_site_dir(tmp_path):
    env = make_env(tmp_path)
    os.symlink("lib", tmp_path / "lib64")
    add_dist(site_of(tmp_path), "alpha", "1.0", ["alpha/__init__.py"])
    index = index_environment(env)
    via_lib64 = str(tmp_path / "lib64" / "python3.11" / "site-packages" / "alpha" / "__init__.py")
    assert index.owner(via_lib64).dist.name == "alpha"
    # the tracer's resolved path (a descriptor's: the kernel spells it with every symlink
    # resolved) wins over the name the process used
    real = os.path.realpath(via_lib64)
    assert real != via_lib64 and index.owner("/nonexistent/x.py", real=real).dist.name == "alpha"


def test_namespace_package_split_over_two_distributions(tmp_path):
    env = make_env(tmp_path)
    site = site_of(tmp_path)
    add_dist(site, "ns.one", "1.0", ["ns/one/__init__.py", "ns/one/data.json"])
    add_dist(site, "ns.two", "2.0", ["ns/two/__init__.py"])
    index = index_environment(env)
    assert index.owner(str(site / "ns" / "one" / "__init__.py")).dist.name == "ns.one"
    assert index.owner(str(site / "ns" / "two" / "__init__.py")).dist.name == "ns.two"
    assert index.owner(str(site / "ns")) is None
    assert index.owner(str(site / "ns" / "stray.py")) is None


def test_unlisted_file_in_a_package_dir_belongs_to_its_package(tmp_path):
    env = make_env(tmp_path)
    site = site_of(tmp_path)
    add_dist(site, "alpha", "1.0", ["alpha/__init__.py", "../../../bin/alpha-cli"])
    index = index_environment(env)
    assert index.owner(str(site / "alpha" / "generated" / "table.dat")).dist.name == "alpha"
    assert index.owner(str(site / "stray.py")) is None  # site-packages is shared
    assert index.owner(str(tmp_path / "bin" / "activate")) is None  # bin is not a package


def test_editable_install_owns_its_source_tree(tmp_path):
    env = make_env(tmp_path / "env")
    site = site_of(tmp_path / "env")
    project = tmp_path / "project"
    write(project / "src" / "mylib" / "__init__.py")
    write(project / "src" / "mylib" / "core.py")
    add_dist(site, "mylib", "0.1", {"__editable__.mylib-0.1.pth": str(project / "src") + "\n"},
             direct_url={"url": file_url(project), "dir_info": {"editable": True}})
    index = index_environment(env)
    found = index.owner(str(project / "src" / "mylib" / "core.py"))
    assert found.dist.name == "mylib" and found.editable and not found.metadata
    assert index.owner(str(project / "src" / "mylib" / "__pycache__" / "core.cpython-311.pyc"))
    assert index.owner(str(project / "README.md")) is None  # the pth names src/, not the root
    assert found.dist.local
    assert found.dist.requirement() == f"mylib @ {file_url(project)}"


def test_editable_finder_mapping(tmp_path):
    env = make_env(tmp_path / "env")
    site = site_of(tmp_path / "env")
    pkg = write(tmp_path / "proj" / "tool" / "__init__.py").parent
    finder = f"MAPPING: dict[str, str] = {{'tool': {str(pkg)!r}}}\nNAMESPACES = {{}}\n"
    add_dist(site, "tool", "3.0", {
        "__editable__.tool-3.0.pth": "import __editable___tool_3_0_finder; x.install()\n",
        "__editable___tool_3_0_finder.py": finder},
        direct_url={"url": file_url(tmp_path / "proj"), "dir_info": {"editable": True}})
    index = index_environment(env)
    assert index.owner(str(pkg / "__init__.py")).dist.name == "tool"
    assert index.owner(str(tmp_path / "proj" / "notes.txt")) is None


def test_editable_root_containing_the_venv_does_not_swallow_it(tmp_path):
    project = tmp_path / "project"
    env = make_env(project / ".venv")
    site = site_of(project / ".venv")
    add_dist(site, "alpha", "1.0", ["alpha/__init__.py"])
    add_dist(site, "proj", "0.1", [],
             direct_url={"url": file_url(project), "dir_info": {"editable": True}})
    index = index_environment(env)
    assert index.owner(str(project / "proj.py")).dist.name == "proj"
    assert index.owner(str(site / "stray.py")) is None
    assert index.owner(str(project / ".venv" / "bin" / "activate")) is None


def test_direct_url_requirements():
    from auditor.resolve import Distribution

    def dist(direct_url):
        return Distribution("pkg", "1.0", "pip", "pip", "/x", (), direct_url)

    vcs = dist({"url": "https://github.com/o/pkg", "vcs_info": {"vcs": "git", "commit_id": "abc"}})
    assert vcs.requirement() == "pkg @ git+https://github.com/o/pkg@abc" and not vcs.local
    archive = dist({"url": "https://h/pkg-1.0.tar.gz", "archive_info": {"hash": "sha256=ff"}})
    assert archive.requirement() == "pkg @ https://h/pkg-1.0.tar.gz#sha256=ff"
    local = dist({"url": "file:///src/pkg", "dir_info": {}})
    assert local.requirement() == "pkg @ file:///src/pkg" and local.local


def test_stdlib_interpreter_and_environment_bounds(tmp_path):
    env = make_env(tmp_path)
    stdlib = tmp_path / "lib" / "python3.11"
    write(stdlib / "json" / "__init__.py")
    index = index_environment(env)
    assert index.owner(str(stdlib / "json" / "__init__.py")).stdlib
    assert index.owner(str(stdlib / "json" / "__pycache__" / "__init__.cpython-311.pyc")).stdlib
    assert index.owner(str(stdlib / "lib-dynload" / "_json.cpython-311-x86_64-linux-gnu.so")).stdlib
    assert index.owner(env.executable).stdlib
    assert index.owner(str(site_of(tmp_path) / "unlisted.py")) is None  # not stdlib
    assert index.in_environment(str(site_of(tmp_path) / "unlisted.py"))
    assert index.in_environment(str(tmp_path / "share" / "x"))
    assert not index.in_environment(str(tmp_path.parent / "data.csv"))
    assert not index.in_environment(str(tmp_path) + "-other/x")


def test_conda_package_owns_its_dist_info(tmp_path):
    env = make_env(tmp_path)
    site = site_of(tmp_path)
    rel_site = os.path.relpath(site, tmp_path)
    info = add_dist(site, "numpy", "1.26.4", ["numpy/__init__.py"], installer="conda",
                    requires=("helper-py>=1",))
    add_dist(site, "helper-py", "1.5", ["helper_py.py"])  # pip-installed into the conda env
    conda_files = [f"{rel_site}/numpy/__init__.py", "lib/libnumpyblas.so"]
    conda_files += [f"{rel_site}/{info.name}/{n}" for n in ("METADATA", "INSTALLER", "RECORD")]
    add_conda_package(tmp_path, "numpy", "1.26.4", conda_files,
                      depends=("libopenblas >=0.3", "python >=3.11,<3.12.0a0", "__glibc >=2.17"))
    add_conda_package(tmp_path, "libopenblas", "0.3.27", ["lib/libopenblas.so"], build="h0")
    index = index_environment(env)
    numpy = index.get("numpy")
    assert numpy.kind == "conda" and numpy.channel == "conda-forge" and numpy.build == "py311_0"
    assert numpy.requirement() == "conda-forge::numpy==1.26.4"
    assert [d.kind for d in index.distributions() if d.key == "numpy"] == ["conda"]
    assert index.owner(str(site / "numpy" / "__init__.py")).dist == numpy
    meta = index.owner(str(info / "METADATA"))
    assert meta.dist == numpy and meta.metadata
    assert index.owner(str(tmp_path / "conda-meta" / "numpy-1.26.4-py311_0.json")).metadata
    closed, warnings = index.closure([numpy])
    assert {d.requirement() for d in closed} == {
        "conda-forge::numpy==1.26.4", "conda-forge::libopenblas==0.3.27", "helper-py==1.5"}
    assert len(warnings) == 1 and "python >=3.11" in warnings[0]  # python is not in this prefix


def test_closure_follows_extras_and_markers(tmp_path):
    env = make_env(tmp_path)
    site = site_of(tmp_path)
    add_dist(site, "app", "1.0", ["app.py"], requires=("lib[fast]>=1", "gone>=2"))
    add_dist(site, "lib", "1.2", ["lib.py"], requires=(
        'speedup; extra == "fast"', 'docs-tool; extra == "docs"',
        'winonly; sys_platform == "win32"', "base-dep (>=1.0)"))
    for name in ("speedup", "docs-tool", "winonly", "base-dep", "unrelated"):
        add_dist(site, name, "0.9", [f"{name.replace('-', '_')}.py"])
    index = index_environment(env)
    closed, warnings = index.closure([index.get("app")])
    assert [d.name for d in closed] == ["app", "base-dep", "lib", "speedup"]
    assert len(warnings) == 2
    assert any("gone>=2" in w and "not installed" in w for w in warnings)
    assert any("base-dep" in w and "0.9 is installed" in w for w in warnings)


def test_excluded_distribution_is_invisible(tmp_path):
    env = make_env(tmp_path)
    site = site_of(tmp_path)
    add_dist(site, "flo-backpack", "0.1", ["auditor/__init__.py"])
    add_dist(site, "user-pkg", "1.0", ["user_pkg.py"], requires=("flo-backpack",))
    index = index_environment(env, exclude_names=["flo_backpack"])
    assert index.get("flo-backpack") is None
    assert [d.name for d in index.distributions()] == ["user-pkg"]
    assert index.owner(str(site / "auditor" / "__init__.py")).excluded
    closed, warnings = index.closure([index.get("user-pkg")])
    assert [d.name for d in closed] == ["user-pkg"] and warnings == []


def test_egg_info_installs(tmp_path):
    env = make_env(tmp_path)
    site = site_of(tmp_path)
    write(site / "old" / "__init__.py")
    write(site / "old-1.0-py3.11.egg-info" / "PKG-INFO", "Name: old\nVersion: 1.0\n")
    write(site / "old-1.0-py3.11.egg-info" / "top_level.txt", "old\n")
    write(site / "old-1.0-py3.11.egg-info" / "requires.txt", "six\n\n[extra]\nlxml\n")
    write(site / "listed" / "__init__.py")
    write(site / "listed-2.0.egg-info" / "PKG-INFO", "Name: listed\nVersion: 2.0\n")
    write(site / "listed-2.0.egg-info" / "installed-files.txt", "../listed/__init__.py\nPKG-INFO\n")
    index = index_environment(env)
    old = index.get("old")
    assert old.requires == ("six", 'lxml; extra == "extra"')
    assert index.owner(str(site / "old" / "__init__.py")).dist == old
    assert index.owner(str(site / "listed" / "__init__.py")).dist.name == "listed"
    assert index.owner(str(site / "listed-2.0.egg-info" / "PKG-INFO")).metadata


def test_environment_from_kernel_record():
    record = {"executable": "/e/bin/python", "version": "3.11.7", "prefix": "/e",
              "base_prefix": "/b",
              "path": ["", "/b/lib/python3.11", "/e/lib/python3.11/site-packages/"],
              "stdlib": ["/b/lib/python3.11"], "purelib": "/e/lib/python3.11/site-packages",
              "platlib": "/e/lib64/python3.11/site-packages", "markers": {"sys_platform": "linux"},
              "cwd": "/nb", "modules": []}
    env = Environment.from_kernel_record(record)
    assert env.paths == ("/b/lib/python3.11", "/e/lib/python3.11/site-packages",
                         "/e/lib64/python3.11/site-packages")
    assert env.markers == {"sys_platform": "linux"} and env.base_prefix == "/b"
