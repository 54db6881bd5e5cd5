"""flo-backpack's kernel side: who imported each package, and which files' functions ran.

Loaded by path beside flo_kernel.py (never imported as a package). Stdlib only; CPython 3.8+.
The evidence `flo-audit --minimize` reads to find optional imports (docs/internals.md):

- `importer` records, from a finder first on `sys.meta_path` that never finds anything: the
  import system asks it about every module not yet loaded, from `import` statements and from
  `importlib.import_module` alike (the `import` audit event misses the latter). For a
  top-level module, or a module imported from another top-level package, it writes the two
  innermost frames outside the import machinery: the statement or call that imported it, and
  that frame's caller (an `_optional(name)` helper is called from the real importer).
- `calls` records (Python >= 3.12): `sys.monitoring` PY_START reports the first call of each
  code object, then is DISABLEd for it, so each function costs one callback in the whole
  run. Module bodies (`<module>`, what an import runs) are not calls. At each cell's end the
  files whose functions started since the last record are written.
"""

from __future__ import annotations

import sys

# Frames of the import system itself: the frozen bootstrap and importlib's own modules.
_MACHINERY = ("<frozen importlib", "<frozen zipimport")
_IMPORTLIB_DIR = "/importlib/"
_TOOL_NAME = "flo-backpack"


class _ImportWatch:
    """A meta path finder that only watches: `find_spec` records the importer, returns None."""

    def __init__(self, write):
        self.write = write
        self.busy = False

    def find_spec(self, name, path=None, target=None):
        if self.busy:
            return None
        self.busy = True
        try:
            self._note(name)
        except Exception:
            pass  # never let watching break an import
        finally:
            self.busy = False
        return None

    def invalidate_caches(self):
        return None

    def _note(self, name):
        top = name.partition(".")[0]
        frames, by = [], ""
        frame = sys._getframe(2)
        while frame is not None and len(frames) < 2:
            filename = frame.f_code.co_filename
            if not (filename.startswith(_MACHINERY) or _IMPORTLIB_DIR in filename):
                if not frames:
                    by = str(frame.f_globals.get("__name__") or "")
                frames.append([filename, frame.f_lineno, frame.f_code.co_name])
            elif frames:
                break  # the caller is the import system again: a nested import's own frames
            frame = frame.f_back
        if not frames or (name != top and by.partition(".")[0] == top):
            return  # nothing outside the import system, or a package importing its own part
        self.write("importer", {"module": name, "by": by, "frames": frames})


class _CallWatch:
    """The files whose functions started (first call of each code object), per cell."""

    def __init__(self):
        self.files = set()
        self.written = set()
        self.tool = None

    def start(self):
        monitoring = getattr(sys, "monitoring", None)
        if monitoring is None:
            return False
        for tool in (4, 3):  # 0-2 and 5 are the debugger, coverage, profiler, optimizer ids
            if monitoring.get_tool(tool) is None:
                break
        else:
            return False
        monitoring.use_tool_id(tool, _TOOL_NAME)
        disable = monitoring.DISABLE
        files = self.files

        def started(code, offset):
            if code.co_name != "<module>":
                files.add(code.co_filename)
            return disable

        monitoring.register_callback(tool, monitoring.events.PY_START, started)
        monitoring.set_events(tool, monitoring.events.PY_START)
        self.tool = tool
        return True

    def new_files(self):
        fresh = self.files - self.written
        self.written |= fresh
        return sorted(f for f in fresh if not f.startswith("<"))


def import_watch(write):
    """Install the watchers; returns a function to call at each cell's end (writes `calls`)."""
    sys.meta_path.insert(0, _ImportWatch(write))
    calls = _CallWatch()
    if not calls.start():
        return lambda: None

    def cell_end():
        files = calls.new_files()
        if files:
            write("calls", {"files": files})

    return cell_end
