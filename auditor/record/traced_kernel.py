"""The notebook's kernel, started under the tracer: which kernelspec to start, the kernel
manager whose launch command the tracer wraps, and the bootstrap code that attaches the
kernel side (kernels/flo_kernel.py, injected by path) before the first cell.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager

from ..common.errors import RecordError
from .base import Tracer

log = logging.getLogger("flo.record")

KERNEL_SIDE = Path(__file__).resolve().parent.parent.parent / "kernels" / "flo_kernel.py"


class TracedKernelManager(AsyncKernelManager):
    """A kernel manager whose launch command runs under the tracer."""

    def __init__(self, *, tracer: Tracer, record_dir: Path, python: str | None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flo_tracer = tracer
        self.flo_record_dir = record_dir
        self.flo_python = python
        self.flo_wrapped = False

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        if self.flo_python:
            argv = [self.flo_python, "-m", "ipykernel_launcher",
                    "-f", os.path.realpath(self.connection_file), *(extra_arguments or [])]
        else:
            argv = super().format_kernel_cmd(extra_arguments)
        wrapped = self.flo_tracer.wrap(list(argv), self.flo_record_dir)
        self.flo_wrapped = wrapped != argv
        log.debug("kernel command: %s", wrapped)
        return wrapped


def kernel_name(requested: str | None, notebook: Mapping[str, Any], python: str | None,
                warnings: list[str] | None = None) -> str:
    """The kernelspec to start, checked now so a typo fails before anything runs. A kernel
    the notebook's metadata names but this machine lacks (shared notebooks carry their
    author's, "conda-env-x-py") falls back to python3, with a warning in `warnings`."""
    if python:
        return "python3"  # only the launch settings are used; argv comes from --python
    named = (notebook.get("metadata", {}).get("kernelspec") or {}).get("name")
    name = requested or named or "python3"
    specs = KernelSpecManager()
    try:
        spec = specs.get_kernel_spec(name)
    except NoSuchKernel:
        if requested or name == "python3":
            raise RecordError(f"no Jupyter kernel named {name!r}; list the installed kernels "
                              "with `jupyter kernelspec list`, or pass --python") from None
        if warnings is not None:
            warnings.append(f"the notebook asks for kernel {name!r}, which is not installed "
                            "here: ran it with python3; pass --python or --kernel to audit "
                            "another environment")
        return kernel_name(None, {}, None)
    if (spec.language or "python").lower() != "python":
        raise RecordError(f"kernel {name!r} runs {spec.language}, not Python; "
                          "choose a Python kernel or pass --python")
    return name


def bootstrap_code(config: dict[str, Any], user_file: Path | None) -> str:
    """The cell that attaches the kernel side with `config` (and sets `__file__` for .py
    workflows), run before the notebook's first cell."""
    code = (f"__import__('runpy').run_path({str(KERNEL_SIDE)!r}, "
            f"run_name='_flo_backpack_kernel')['attach'](get_ipython(), {config!r})")
    if user_file is not None:
        code += f"\nget_ipython().user_ns['__file__'] = {str(Path(user_file).resolve())!r}"
    return code
