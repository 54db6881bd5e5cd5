"""Emitting the software and compute specs and the summary from hand-built resolutions."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import yaml
from rich.console import Console

from auditor.backpack.compute import draft_compute, render_compute_yml
from auditor.backpack.session import Session
from auditor.emit.compute import measure_compute
from auditor.emit.environment import (
    draft_environment,
    env_name,
    render_environment_yml,
    render_requirements_txt,
)
from auditor.emit.report import build_summary
from auditor.events import Exec, Exit, Spawn
from auditor.resolve.base import Distribution
from auditor.roles import MANAGER, TOOL, TRACER, WORKER, assign_roles, is_python_interpreter
from auditor.summary_view import render_summary

# ---------------------------------------------------------------- fakes at the resolve edge


def dist(name, version, requires=(), kind="pip", direct_url=None, channel=None):
    return Distribution(name=name, version=version, kind=kind, installer="pip",
                        location=f"/env/site-packages/{name}-{version}.dist-info",
                        requires=tuple(requires), direct_url=direct_url, channel=channel)


@dataclass
class DistUse:
    dist: Distribution
    cells: set
    pids: set
    first_path: str = ""


@dataclass
class Resolution:
    used: dict
    stdlib_cells: set = field(default_factory=set)
    workflow: set = field(default_factory=set)
    unknown: list = field(default_factory=list)
    outside: list = field(default_factory=list)


class Index:
    """Requires-Dist closure over a fixed set of distributions, as EnvIndex does it."""

    def __init__(self, *dists):
        self.by_key = {d.key: d for d in dists}

    def get(self, name):
        return self.by_key.get(name.lower().replace("_", "-"))

    def closure(self, seeds):
        seen, todo, warnings = {}, list(seeds), []
        while todo:
            d = todo.pop()
            if d.key in seen:
                continue
            seen[d.key] = d
            for req in d.requires:
                name = req.split(";")[0].split("=")[0].split(">")[0].strip()
                if ";" in req and "extra ==" in req:
                    continue
                if self.get(name) is None:
                    warnings.append(f"{name} required by {d.name} is not installed")
                else:
                    todo.append(self.get(name))
        return list(seen.values()), warnings


KERNEL = 100
WORKER_PID = 200
GZIP = 300
NUMPY = dist("numpy", "2.2.6")
SKLEARN = dist("scikit-learn", "1.6.1", ["numpy>=1.19.5", "scipy>=1.6.0", "joblib>=1.2.0",
                                         "pytest>=7; extra == 'tests'"])
SCIPY = dist("scipy", "1.15.2", ["numpy<2.5,>=1.23.5"])
JOBLIB = dist("joblib", "1.4.2")
IPYKERNEL = dist("ipykernel", "6.29.5", ["traitlets>=5.4.0"])
TRAITLETS = dist("traitlets", "5.14.3")
TABULATE = dist("tabulate", "0.9.0")  # installed, used only at kernel start-up
OWN = dist("flo-backpack", "0.1.0", ["rich"])
FLOEDIT = dist("floedit", "0.1", direct_url={"url": "file:///home/me/floedit",
                                             "dir_info": {"editable": True}})
LIBZLIB = dist("libzlib", "1.3.1", kind="conda", channel="https://conda.anaconda.org/conda-forge")
PYTHON_CONDA = dist("python", "3.11.7", kind="conda", channel="conda-forge")
DATEUTIL = dist("python-dateutil", "2.9.0.post0", ["six>=1.5"])
SIX = dist("six", "1.17.0")

INDEX = Index(NUMPY, SKLEARN, SCIPY, JOBLIB, IPYKERNEL, TRAITLETS, TABULATE, OWN, FLOEDIT,
              LIBZLIB, PYTHON_CONDA, DATEUTIL, SIX)
ROLES = assign_roles([Spawn(1, KERNEL), Spawn(KERNEL, KERNEL + 1, thread=True),
                      Spawn(KERNEL, WORKER_PID), Spawn(KERNEL, GZIP),
                      Exec(GZIP, "/usr/bin/gzip", ["gzip", "-d"]), Exit(GZIP, 0)],
                     kernel_pid=KERNEL)


def resolution():
    used = {
        "scikit-learn": DistUse(SKLEARN, {2}, {KERNEL}),
        "numpy": DistUse(NUMPY, {None, 1, 2}, {KERNEL}),
        "tabulate": DistUse(TABULATE, {None}, {KERNEL}),            # kernel machinery only
        "flo-backpack": DistUse(OWN, {1}, {KERNEL}),                 # our own code: never pinned
        "floedit": DistUse(FLOEDIT, {3}, {KERNEL + 1}),              # a kernel thread: manager
        "libzlib": DistUse(LIBZLIB, {None}, {GZIP}),                 # a tool at start-up only
        "python": DistUse(PYTHON_CONDA, {1}, {KERNEL}),              # written as python=
        "python-dateutil": DistUse(DATEUTIL, {None}, {WORKER_PID}),  # workers: always pinned
    }
    return Resolution(used, workflow={"/nb/helpers.py"}, unknown=["/opt/x.dat"])


def spec():
    return draft_environment(resolution(), INDEX, python="3.11.7", notebook_stem="my analysis",
                             roles=ROLES)


# ---------------------------------------------------------------- roles


def test_roles_from_the_process_tree():
    roles = assign_roles([Spawn(1, KERNEL), Spawn(KERNEL, KERNEL + 1, thread=True),
                          Spawn(KERNEL, 200), Spawn(200, 201), Spawn(KERNEL, GZIP),
                          Exec(200, "/env/bin/python3.11",
                               ["python", "-c", "from multiprocessing.spawn import spawn_main; "
                                "spawn_main(tracker_fd=5, pipe_handle=7)",
                                "--multiprocessing-fork"]),
                          Exec(GZIP, "/usr/bin/gzip", ["gzip"]), Exit(GZIP, 0), Exit(201, -9)],
                         kernel_pid=KERNEL)
    assert roles.of(1) == TRACER
    assert roles.of(KERNEL) == MANAGER and roles.of(KERNEL + 1) == MANAGER
    assert roles.of(200) == WORKER and roles.of(201) == WORKER  # forked, never exec'd
    assert roles.of(GZIP) == TOOL
    assert roles.counts() == {MANAGER: 1, WORKER: 2, TOOL: 1}
    assert roles.exits == {GZIP: 0, 201: -9}


def test_a_python_program_the_notebook_runs_is_a_tool():
    """`!python -c ... | head -1`, a console script (csvstat): tools of the manager, never
    workers, even when they die of SIGPIPE; a pool's spawned child is a worker."""
    roles = assign_roles([Spawn(1, KERNEL), Spawn(KERNEL, 300), Spawn(KERNEL, 301),
                          Spawn(301, 302), Spawn(KERNEL, 303),
                          Exec(300, "/env/bin/python", ["python", "-c", "print(1)"]),
                          Exec(301, "/env/bin/csvstat", ["csvstat", "a.csv"]),
                          Exec(303, "/env/bin/python",
                               ["python", "-m", "joblib.externals.loky.backend.popen_loky_posix",
                                "--process-name", "LokyProcess-1"]),
                          Exit(300, -13)], kernel_pid=KERNEL)
    assert roles.of(300) == TOOL and roles.of(302) == TOOL  # 302: a fork of the tool 301
    assert roles.of(303) == WORKER
    assert roles.side(300) == MANAGER and roles.side(302) == MANAGER
    assert roles.worker_roots() == [303]


def test_a_script_counts_by_its_interpreter(tmp_path):
    script = tmp_path / "run-me"
    script.write_text("#!/usr/bin/env -S python3 -u\nprint(1)\n")
    shell = tmp_path / "run.sh"
    shell.write_text("#!/bin/sh\necho 1\n")
    assert is_python_interpreter(str(script))
    assert not is_python_interpreter(str(shell))
    assert is_python_interpreter("/usr/bin/python3.11") and not is_python_interpreter("/bin/gzip")


# ---------------------------------------------------------------- environment


def test_pins_are_cell_use_plus_workers_plus_machinery_closed_under_requirements():
    s = spec()
    reasons = {p.name: p.reason for p in s.pins}
    assert reasons["scikit-learn"] == "used" and reasons["numpy"] == "used"
    assert reasons["scipy"] == "required by scikit-learn"
    assert reasons["joblib"] == "required by scikit-learn"
    assert reasons["ipykernel"] == "kernel machinery"
    assert reasons["traitlets"] == "required by ipykernel"
    assert reasons["python-dateutil"] == "used" and reasons["six"] == "required by python-dateutil"
    assert "tabulate" not in reasons      # opened only while no cell ran
    assert "libzlib" not in reasons       # a tool run at start-up
    assert "flo-backpack" not in reasons  # never our own distribution
    assert "pytest" not in reasons        # an extra nobody asked for
    numpy = next(p for p in s.pins if p.name == "numpy")
    assert numpy.cells == [1, 2]


def test_environment_yml_is_conda_format_with_exact_pins():
    s = spec()
    text = render_environment_yml(s, "my analysis.ipynb", "2026-11-29")
    doc = yaml.safe_load(text)
    assert text.startswith("# Drafted by flo-audit from a traced run of my analysis.ipynb")
    assert doc["name"] == env_name("my analysis") == "my-analysis"
    assert doc["channels"] == ["conda-forge"]
    deps = doc["dependencies"]
    assert deps[0] == "python=3.11.7"
    assert "conda-forge::python==3.11.7" not in deps  # python is the python= line only
    assert "pip" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip == sorted(pip, key=str.lower)
    assert "numpy==2.2.6" in pip and "scikit-learn==1.6.1" in pip and "ipykernel==6.29.5" in pip
    assert "floedit @ file:///home/me/floedit" in pip
    assert not any("flo-backpack" in line or "tabulate" in line for line in pip)


def test_conda_packages_are_pinned_with_their_channel():
    used = {"libzlib": DistUse(LIBZLIB, {1}, {GZIP}), "numpy": DistUse(NUMPY, {1}, {KERNEL})}
    s = draft_environment(Resolution(used), INDEX, python="3.11.7", notebook_stem="nb",
                          roles=ROLES)
    deps = yaml.safe_load(render_environment_yml(s, "nb.ipynb", "today"))["dependencies"]
    assert deps[:2] == ["python=3.11.7", "conda-forge::libzlib==1.3.1"]
    requirements = render_requirements_txt(s, "nb.ipynb", "today")
    assert "libzlib" not in requirements.split("# 1 conda packages")[1]
    assert "numpy==2.2.6  # used in cell 1" in requirements


def test_local_install_is_a_direct_reference_with_a_warning():
    s = spec()
    assert ["floedit is a local/editable install (file:///home/me/floedit): it will not install "
            "elsewhere; publish it or vendor it"] == [w for w in s.warnings if "floedit" in w]


def test_requirements_txt_has_the_same_pip_pins():
    s = spec()
    text = render_requirements_txt(s, "nb.ipynb", "today")
    lines = [line.split("  #")[0] for line in text.splitlines() if not line.startswith("#")]
    pip = next(d["pip"] for d in yaml.safe_load(render_environment_yml(s, "nb", "t"))
               ["dependencies"] if isinstance(d, dict))
    assert lines == pip


def test_missing_kernel_machinery_is_a_warning_not_a_crash():
    s = draft_environment(Resolution({"numpy": DistUse(NUMPY, {1}, {KERNEL})}), Index(NUMPY),
                          python="3.12.1", notebook_stem="nb")
    assert [p.name for p in s.pins] == ["numpy"]
    assert any("ipykernel is not installed" in w for w in s.warnings)


def test_compute_yml_defaults_say_so():
    text = render_compute_yml(draft_compute(), "nb.ipynb", "today")
    config = yaml.safe_load(text)["vine_factory_config"]
    assert config == {"min-workers": 1, "max-workers": 1, "cores": 1, "memory": 4096,
                      "disk": 10000}
    assert text.count("default, not measured") == 5



def test_compute_yml_unsampled_workers_keep_the_count_the_trace_saw():
    # Short-lived pool workers can end between two samples: resources stay defaults, but
    # the number of workers that ran tasks is known from the trace and is not lost.
    spec = measure_compute([], worker_of={}, workers_seen=3)
    text = render_compute_yml(spec, "nb.ipynb", "today")
    config = yaml.safe_load(text)
    assert config["vine_factory_config"]["max-workers"] == 3
    assert "max-workers: 3  # 3 workers ran tasks (seen in the trace)" in text
    assert config["vine_factory_config"]["memory"] == 4096


def test_compute_cores_count_workers_shorter_than_a_cpu_window():
    """Pool children that live 0.6 s each, busy all the time, two at once: their whole lives
    are their windows, so the peak is never below the mean and both count as busy."""
    samples = [{"t": t, "pid": pid, "rss": 50 * 2**20, "cpu": 0.9 * (t - 10.0)}
               for pid in (41, 42) for t in (10.0, 10.2, 10.4, 10.6)]
    spec = measure_compute(samples, worker_of={41: 41, 42: 42}, workers_seen=2)
    measured = spec.measurements
    assert measured["peak_cores"] >= measured["mean_cores"] == 0.9
    assert spec.max_workers == 2 and spec.cores == 1

# ---------------------------------------------------------------- summary


def summary(status="complete", failed=None):
    session = Session.from_json({
        "schema": 1, "notebook": "/nb/analysis.ipynb", "status": status, "failed_cell": failed,
        "backend": "strace", "kernel": {"executable": "/env/bin/python"}})
    return build_summary(session=session, spec=spec(), compute=draft_compute(),
                         resolution=resolution(), roles=ROLES,
                         cell_sources={1: "import numpy", 2: "import sklearn", 3: "import floedit",
                                       4: "print(1)"},
                         cell_files={3: ["/nb/helpers.py"]}, warnings=["w1"],
                         timings={"run": 1.5})


def test_summary_is_a_per_cell_dependency_report():
    doc = json.loads(json.dumps(summary()))
    cells = {c["index"]: c for c in doc["cells"]}
    assert cells[1]["packages"] == ["numpy"]
    assert cells[2]["packages"] == ["numpy", "scikit-learn"]
    assert cells[3] == {"index": 3, "source": "import floedit", "packages": ["floedit"],
                        "files": ["/nb/helpers.py"]}
    assert cells[4]["packages"] == []
    assert doc["complete"] is True and doc["unknown_paths"] == ["/opt/x.dat"]
    assert doc["processes"]["counts"] == {"manager": 1, "worker": 1, "tool": 1}
    assert {p["name"]: p["reason"] for p in doc["packages"]}["joblib"] == "required by scikit-learn"


def test_terminal_summary_marks_a_failed_run_incomplete():
    out = io.StringIO()
    render_summary(summary("failed", {"index": 3, "ename": "ValueError", "evalue": "bad input"}),
                   "/tmp/x-backpack", Console(file=out, width=200))
    text = out.getvalue()
    assert "INCOMPLETE: cell 3 raised ValueError: bad input" in text
    assert "/tmp/x-backpack" in text and "packages pinned" in text
    ok = io.StringIO()
    render_summary(summary(), "/tmp/x-backpack", Console(file=ok, width=200))
    assert "INCOMPLETE" not in ok.getvalue()
