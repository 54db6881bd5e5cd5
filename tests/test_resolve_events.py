"""`resolve`: events -> used distributions per cell, workflow files, unknown and outside paths."""

from __future__ import annotations

from auditor.events import Access, CellMark, Exec, Import, first_accesses, mark_path
from auditor.resolve import index_environment, resolve
from tests.envs import add_dist, make_env, site_of, write


def _setup(tmp_path):
    prefix = tmp_path / "env"
    env = make_env(prefix)
    site = site_of(prefix)
    add_dist(site, "alpha", "1.0", ["alpha/__init__.py", "alpha/core.py", "../../../bin/alpha"])
    add_dist(site, "meta-only", "1.0", ["meta_only/__init__.py"])
    add_dist(site, "written", "1.0", ["written/__init__.py"])
    add_dist(site, "listed", "1.0", ["listed/__init__.py"])
    add_dist(site, "other-proc", "1.0", ["other_proc.py"])
    add_dist(site, "ours", "1.0", ["ours/__init__.py"])
    write(prefix / "lib" / "python3.11" / "json" / "__init__.py")
    notebook = tmp_path / "nb"
    write(notebook / "helper.py")
    write(notebook / "pkg" / "__init__.py")
    return index_environment(env), prefix, site, notebook


def test_resolve_classifies_every_kind_of_access(tmp_path):
    index, prefix, site, nb = _setup(tmp_path)
    info = site / "meta_only-1.0.dist-info"
    events = [
        Access(10, str(site / "alpha" / "__init__.py"), "r", cell=None),
        Access(10, str(site / "alpha" / "__pycache__" / "core.cpython-311.pyc"), "r", cell=1),
        Import(10, "alpha", str(site / "alpha" / "__init__.py"), cell=3),
        Exec(11, str(prefix / "bin" / "alpha"), ["alpha"], cell=2),
        Access(10, str(info / "METADATA"), "r", cell=1),
        Access(10, str(info / "entry_points.txt"), "r", cell=1),
        Access(10, str(site / "written" / "__init__.py"), "w", cell=1),
        Access(10, str(site / "listed"), "d", cell=1),
        Access(99, str(site / "other_proc.py"), "r", cell=1),
        Access(10, str(prefix / "lib" / "python3.11" / "json" / "__init__.py"), "r", cell=4),
        Access(10, str(nb / "helper.py"), "r", cell=1),
        Access(10, str(nb / "pkg" / "__pycache__" / "__init__.cpython-311.pyc"), "r", cell=1),
        Access(10, str(nb / "__pycache__" / "helper.cpython-311.pyc"), "w", cell=1),
        Access(10, str(nb / "data.csv"), "r", cell=1),
        Access(10, str(nb / "model.pth"), "r", cell=1),  # weights, not a path file
        Access(10, str(tmp_path / "elsewhere.dist-info" / "x"), "r", cell=1),
        Access(10, str(nb / "out.csv"), "w", cell=1),
        Access(10, str(nb), "d", cell=1),
        Access(10, str(site / "stray_module.py"), "r", cell=1),
        Access(10, str(site / "stray" / "__pycache__" / "x.cpython-311.pyc"), "w", cell=1),
        Access(10, "/etc/hosts", "r", cell=1),
        Access(10, "/proc/self/maps", "r", cell=1),
        Access(10, "/dev/null", "rw", cell=1),
        Access(10, str(site / "ours" / "__init__.py"), "r", cell=1),
        CellMark(10, 1, "start"),
        Access(10, mark_path(1, "end"), "r", cell=1),
        Import(10, "nothing", None, cell=1),
    ]
    result = resolve(events, index, str(nb), ignore=[str(site / "ours")], pids={10, 11})
    assert set(result.used) == {"alpha"}
    alpha = result.used["alpha"]
    assert alpha.cells == {None, 1, 2, 3}
    assert alpha.pids == {10, 11}
    assert alpha.first_path == str(site / "alpha" / "__init__.py")
    assert result.stdlib_cells == {4}
    assert result.workflow == {str(nb / "helper.py"), str(nb / "pkg" / "__init__.py")}
    assert result.unknown == [str(site / "stray_module.py")]
    assert result.outside == sorted(["/etc/hosts", str(nb / "data.csv"), str(nb / "model.pth"),
                                     str(tmp_path / "elsewhere.dist-info" / "x")])


def test_resolve_without_pid_filter_counts_every_process(tmp_path):
    index, prefix, site, nb = _setup(tmp_path)
    events = [Access(99, str(site / "other_proc.py"), "r", cell=5),
              Access(98, str(site / "other_proc.py"), "rw", cell=6)]
    result = resolve(events, index, str(nb))
    assert result.used["other-proc"].cells == {5, 6}
    assert result.used["other-proc"].pids == {98, 99}


def test_resolve_uses_the_resolved_path(tmp_path):
    index, prefix, site, nb = _setup(tmp_path)
    link = tmp_path / "linked-site"
    link.symlink_to(site)
    events = [Access(1, str(link / "alpha" / "core.py"), "r",
                     real=str(site / "alpha" / "core.py"), cell=7)]
    result = resolve(events, index, str(nb))
    assert result.used["alpha"].cells == {7}
    assert result.outside == [] and result.unknown == []


def test_editable_project_data_in_the_notebook_folder_is_data(tmp_path):
    prefix = tmp_path / "env"
    env = make_env(prefix)
    project = tmp_path / "project"
    write(project / "mylib" / "__init__.py")
    write(project / "notebook" / "input.csv")
    add_dist(site_of(prefix), "mylib", "0.1", [],
             direct_url={"url": f"file://{project}", "dir_info": {"editable": True}})
    index = index_environment(env)
    events = [Access(1, str(project / "mylib" / "__init__.py"), "r", cell=1),
              Access(1, str(project / "notebook" / "input.csv"), "r", cell=1)]
    result = resolve(events, index, str(project))
    assert set(result.used) == {"mylib"}
    assert result.outside == [str(project / "notebook" / "input.csv")]


def test_first_accesses_drops_only_repeats_and_resolve_reports_the_same(tmp_path):
    index, prefix, site, nb = _setup(tmp_path)
    alpha = str(site / "alpha" / "core.py")
    events = [
        Access(10, alpha, "r", alpha, 1.0, cell=1),
        Exec(10, str(prefix / "bin" / "alpha"), ["alpha"], 1.1, cell=1),
        Access(10, alpha, "r", alpha, 1.2, cell=1),  # a repeat: dropped
        Access(10, alpha, "r", alpha, 1.3, cell=2),  # another cell
        Access(11, alpha, "r", alpha, 1.4, cell=1),  # another process
        Access(10, alpha, "w", alpha, 1.5, cell=1),  # another mode
        Access(10, alpha, "r", None, 1.6, cell=1),  # no resolved path
        Access(10, alpha, "r", alpha, 1.7, cell=1, given="core.py"),  # named relatively
        Access(10, alpha, "r", alpha, 1.8, cell=1, source="hook"),  # the other layer
        Exec(10, str(prefix / "bin" / "alpha"), ["alpha"], 1.9, cell=1),  # not an Access
        Access(10, alpha, "r", alpha, 2.0, cell=2),  # a repeat of 1.3
    ]
    kept = list(first_accesses(events))
    assert [e.t for e in kept] == [1.0, 1.1, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9]
    assert resolve(kept, index, str(nb)) == resolve(events, index, str(nb))
