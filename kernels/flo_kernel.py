"""flo-backpack's kernel side: log what the notebook's kernel does, cell by cell.

Injected by path into the user's kernel (never imported as a package, never put on sys.path,
so it shadows nothing there) and run by `attach(shell, config)`. It installs a PEP 578 audit
hook and IPython pre/post_run_cell handlers that append JSON lines to `config["log"]`
(hooks.jsonl, format in docs/internals.md). Stdlib only; must run on CPython 3.8 to 3.13.

Cost matters: the audit hook sees every audited event of the process, so it returns at once
for events it does not want, buffers lines and writes them at cell boundaries, at fork and at
exit. The file is opened with O_APPEND so forked children share it safely.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import threading
import time
from itertools import compress
from operator import ne

# Keep in sync with auditor/events.py (MARK_PREFIX, mark_path).
MARK_PREFIX = "/.flo-backpack-mark/"

_BUFFERED_LINES = 512
# Open flags of anything but a plain read (write access, create, truncate, append, O_TMPFILE):
# those opens stay the C open's, seen by the tracer.
_NOT_READ_ONLY = (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                  | getattr(os, "O_TMPFILE", 0))
# Names of the user namespace a `names` record never lists (besides those starting with "_"):
# IPython's own, bound at start-up and rebound by it, never by the notebook.
_SHELL_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython"})
# An identity key that, unlike id(), raises no audit event: the base class's hash is derived
# from the address alone (one C call per name, no hook call), whatever the type overrides.
# Used only where the addresses cannot be read in bulk (_address_reader).
_identity = object.__hash__
# Names compared at once by _equal_run: a chunk that differs is walked name by name.
_CHUNK = 256
# Identities of a range that differs are compared in this many parts, each part that differs
# likewise, down to _WALKED names, walked one by one: a few rebinds cost a few dozen C-level
# comparisons of short slices, wherever they are.
_PARTS = 16
_WALKED = 16
# Runs of equal names write_names pairs before it looks the rest up by name: a run ends at
# each deleted name, so this many deletions in one cell keep the cheap path.
_RUNS = 16
# JSON string literal, \u-escaping non-ASCII and lone surrogates (undecodable path bytes).
_json_string = json.encoder.encode_basestring_ascii


def mark_path(seq, phase):
    """The nonexistent path opened at a cell boundary so syscall tracers see it in order."""
    return f"{MARK_PREFIX}cell/{seq}/{phase}"


def attach(shell, config):
    """Start logging into config["log"]; returns None so the bootstrap cell displays nothing."""
    _die_with_parent()
    # The interpreter's description and the network handlers (hosts, URLs) live beside
    # this file, loaded by path like it.
    interpreter = _beside("flo_interpreter.py", "_flo_backpack_interpreter")
    side = _KernelSide(config["log"], bool(config.get("marks", True)), shell, interpreter)
    net = _beside("flo_net.py", "_flo_backpack_net")
    side.handlers.update(net["network_handlers"](side.write))
    try:
        url_status = bool(net["watch_responses"](side.write))
    except Exception:
        url_status = False
    side.write_kernel_record(url_status)
    # Who imported each package, which files' functions ran: --minimize's evidence.
    side.cell_end_watch = _beside("flo_imports.py", "_flo_backpack_imports")["import_watch"](
        side.write)
    sys.addaudithook(_make_hook(side.handlers))
    if config.get("quiet_key") is not None:
        _quiet_reads(side, int(config["quiet_key"]))
    shell.events.register("pre_run_cell", side.pre_run_cell)
    shell.events.register("post_run_cell", side.post_run_cell)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=side.flush, after_in_child=side.after_fork_in_child)
    atexit.register(side.flush)
    return None


def _die_with_parent():
    """SIGKILL this kernel when its parent ends: under strace that is the tracer, which only
    detaches its tracees when it dies (flo-audit SIGKILLed takes strace with it). Linux only;
    ctypes is loaded by ipykernel already, and no audit hook is installed yet."""
    try:
        import ctypes

        zero = ctypes.c_ulong(0)
        ctypes.CDLL(None).prctl(1, ctypes.c_ulong(9), zero, zero, zero)  # PDEATHSIG, SIGKILL
    except (OSError, AttributeError, ImportError):
        pass


def _quiet_reads(side, key):
    """Read files with an openat whose mode argument is `key`, which the ptrace tracer's
    seccomp filter lets run without a stop: the import system's (`_io.open_code`: modules'
    source and bytecode, zip archives) and the notebook's own reads through `open`
    (builtins.open and IPython's open, each given an opener; io.open, every other mode and a
    caller's own opener are left to the C open). Each read that succeeds is recorded as an
    `opened` record (its real path from the descriptor), written through at once so a kernel
    killed in the cell loses none. A stop costs more than the rest of an import, or of reading
    a small file, here. x86_64 Linux only (the ptrace backend's); the C open stays for non-str
    paths and where ctypes cannot."""
    try:
        import _io
        import builtins
        import ctypes
        import functools

        syscall = ctypes.CDLL(None, use_errno=True).syscall
        syscall.restype = ctypes.c_long
        syscall.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_long,
                            ctypes.c_ulong)
    except (ImportError, OSError, AttributeError):
        return
    original_code, original_open = _io.open_code, _io.open
    sys_openat, at_fdcwd = 257, -100
    read_only = os.O_RDONLY | os.O_CLOEXEC
    get_errno, fsencode, os_open = ctypes.get_errno, os.fsencode, os.open

    real_path = _descriptor_paths(side)

    def quiet_fd(path, flags, ev="opened"):
        """The descriptor of the keyed openat, its read recorded as `ev`; -errno when it
        failed."""
        fd = syscall(sys_openat, at_fdcwd, fsencode(path), flags, key)
        if fd < 0:
            return -get_errno()
        real = real_path(fd)
        # Written through: the tracer's records are never lost with the kernel's buffer,
        # and neither may these, which stand for them.
        side.write_path(ev, _absolute(path), None, _as_named(path), real)
        side.flush()
        return fd

    def open_code(path):
        if type(path) is not str or "\0" in path:
            return original_code(path)  # its TypeError, or ValueError (c_char_p would truncate)
        sys.audit("open", path, "rb", read_only)  # as the C open_code would (io.open)
        fd = quiet_fd(path, read_only)
        if fd < 0:
            raise OSError(-fd, os.strerror(-fd), path)
        try:
            opened = _io.open(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        opened.raw.name = path
        return opened

    def quiet_opener(path, flags):
        if type(path) is str and "\0" not in path and not flags & _NOT_READ_ONLY:
            fd = quiet_fd(path, flags)
            if fd >= 0:
                return fd
        # As FileIO opens without an opener; a failed read is retried here so that its error
        # (and its message, with the name as given) is the C open's, and the tracer sees it.
        return os_open(path, flags, 0o666)

    @functools.wraps(original_open)
    def open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
             closefd=True, opener=None):
        if opener is None and type(mode) is str and not mode.strip("rbtU"):
            opener = quiet_opener
        return original_open(file, mode, buffering, encoding, errors, newline, closefd, opener)

    # Pickled by reference as builtins.open (a process that unpickles it gets its own).
    # io.open stays the C function: pickle finds builtins by module and name (`io.open`), and
    # cloudpickle pickles IPython's open by value, with the C open as its __wrapped__.
    open.__module__ = "builtins"
    _io.open_code = open_code
    builtins.open = open
    shell_module = sys.modules.get("IPython.core.interactiveshell")
    if getattr(shell_module, "io_open", None) is original_open:
        shell_module.io_open = open  # the user namespace's `open` calls it (IPython 8+)
    _quiet_listings(quiet_fd)


def _quiet_listings(quiet_fd):
    """The import system's directory listings (FileFinder fills its cache with `_os.listdir`,
    `_os` being the posix module) through the keyed openat too, each recorded as a `listed`
    record: its `_os` becomes a copy of posix whose listdir lists an open descriptor. Every
    other caller of listdir, and a path that is not a str, keep posix's (the tracer sees it)."""
    external = sys.modules.get("_frozen_importlib_external")
    posix = getattr(external, "_os", None)
    if posix is None or not hasattr(posix, "listdir"):
        return
    posix_listdir, close = posix.listdir, posix.close
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

    def listdir(path=None):
        if type(path) is str and path and "\0" not in path:
            fd = quiet_fd(path, flags, "listed")
            if fd >= 0:
                try:
                    return posix_listdir(fd)
                finally:
                    close(fd)
        return posix_listdir(path)  # its error (the tracer sees the failed open) or names

    seen = type(sys)(posix.__name__, posix.__doc__)
    seen.__dict__.update(posix.__dict__)
    seen.listdir = listdir
    external._os = seen


def _descriptor_paths(side):
    """`real_path(fd)`: the path a descriptor of this process shows (None if unreadable), read
    in its /proc/PID/fd, kept open per process (side.pid is set again at fork): a readlink
    there looks up one name, not the four of /proc/self/fd/N."""
    folders = {}
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY
    readlink = os.readlink

    def real_path(fd):
        try:
            folder = folders.get(side.pid)
            if folder is None:
                folder = folders[side.pid] = os.open(f"/proc/{side.pid}/fd", flags)
            return readlink(str(fd), dir_fd=folder)
        except OSError:
            return None

    return real_path


def _beside(filename, run_name):
    """Run a kernel-side file that lives beside this one, by path (never imported)."""
    return runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), filename),
                          run_name=run_name)


class _KernelSide:
    """The log file, the cell being run, and the handlers that write to the log."""

    def __init__(self, log_path, marks, shell, interpreter):
        self.log_path = os.path.abspath(log_path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(self.log_path, flags, 0o644)
        self.marks = marks
        self.shell = shell
        self.interpreter = interpreter  # flo_interpreter.py's namespace
        self.pid = os.getpid()
        self.lines = []
        self.lock = threading.Lock()
        self.write_through = False  # forked children may leave by os._exit: no buffering there
        self.seq = None
        self.next_seq = 0
        self.raw_cell = None
        self.modules_before = set()
        self.last_popen = None
        self.cell_end_watch = lambda: None  # flo_imports.py's `calls` record, at cell end
        # Identities of many objects at once: their addresses, a machine word each, in bytes
        # (unit: bytes per name), or one object.__hash__ int per name where that cannot be.
        self.addresses, self.unit = _address_reader() or (None, 1)
        # The user namespace at the last cell end: its names in order (the list keeps the key
        # strings alive, so their addresses are not reused), the addresses of those keys
        # (None without the bulk reader), and the identities of their values.
        self.ns_names, self.ns_keys, self.ns_ids = self.namespace()
        self.handlers = {
            "subprocess.Popen": self.on_popen,
            "os.exec": self.on_exec,
            "os.posix_spawn": self.on_posix_spawn,
            "os.system": self.on_system,
        }
        if not marks:  # a syscall tracer records every open and listing itself
            self.handlers.update({"open": self.on_open, "os.listdir": self.on_listdir,
                                  "os.scandir": self.on_listdir, "glob.glob": self.on_glob})

    # -- the log ------------------------------------------------------------------------

    def write(self, ev, fields, pid=None):
        record = {"ev": ev, "pid": self.pid if pid is None else pid, "t": time.time(),
                  "seq": self.seq}
        record.update(fields)
        self.append(json.dumps(record, separators=(",", ":"), default=str) + "\n")

    def write_path(self, ev, path, mode=None, given=None, real=None):
        """write() for the hot path (open, opened, listdir): formatted by hand, about 4x
        cheaper. `given`: the path as the code named it, when relative (kept as "as");
        `real`: the path its descriptor shows."""
        seq = "null" if self.seq is None else self.seq
        extra = f',"mode":"{mode}"' if mode else ""
        if given:
            extra += f',"as":{_json_string(given)}'
        if real:
            extra += f',"real":{_json_string(real)}'
        self.append(f'{{"ev":"{ev}","pid":{self.pid},"t":{time.time()!r},"seq":{seq},'
                    f'"path":{_json_string(path)}{extra}}}\n')

    def append(self, line):
        with self.lock:
            self.lines.append(line)
            full = len(self.lines) >= _BUFFERED_LINES
        if full or self.write_through:
            self.flush()

    def flush(self):
        with self.lock:
            lines, self.lines = self.lines, []
        if not lines:
            return
        data = "".join(lines).encode("utf-8", "surrogateescape")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass

    def after_fork_in_child(self):
        parent = self.pid
        self.pid = os.getpid()
        self.lock = threading.Lock()  # another thread may have held it at fork time
        self.lines = []
        self.write_through = True
        self.write("fork", {"child": self.pid}, pid=parent)

    def write_kernel_record(self, url_status=False):
        """The first record: the interpreter, its paths, HOME, the tool folders set in the
        environment, and whether URL responses are logged (`response` records)."""
        self.write("kernel", self.interpreter["kernel_record"](url_status))
        self.flush()

    def mark(self, seq, phase):
        try:
            os.close(os.open(mark_path(seq, phase), os.O_RDONLY))
        except OSError:
            pass  # expected: the path does not exist; the failed open is the mark

    # -- IPython cell events ------------------------------------------------------------

    def pre_run_cell(self, info=None):
        self.seq = self.next_seq
        self.next_seq += 1
        self.raw_cell = getattr(info, "raw_cell", None)
        self.modules_before = set(sys.modules.copy())  # copy(): atomic vs. other threads
        self.write("cell", {"phase": "start"})
        if self.marks:  # the tracer's record has the start: the log may wait for the end
            self.mark(self.seq, "start")
        else:  # hooks alone: on disk now, so a kernel that dies in the cell still names it
            self.flush()

    def post_run_cell(self, result=None):
        if self.seq is None:
            return  # the bootstrap cell that attached us: it had no pre_run_cell of ours
        try:
            self.write_imports(result)
        except Exception:
            pass
        try:
            self.write_names()
        except Exception:
            pass
        try:
            self.cell_end_watch()
        except Exception:
            pass
        self.write("cell", {"phase": "end"})
        self.flush()
        if self.marks:
            self.mark(self.seq, "end")
        self.seq = None

    def write_imports(self, result):
        raw = getattr(getattr(result, "info", None), "raw_cell", None) or self.raw_cell or ""
        module_file = self.interpreter["module_file"]
        static = set()
        for name in self.interpreter["imported_names"](self.shell, raw):
            module = sys.modules.get(name)
            if module is not None:
                static.add(name)
                self.write("import", {"module": name, "path": module_file(module),
                                      "static": True})
        for name in sorted(set(sys.modules.copy()) - self.modules_before - static):
            path = module_file(sys.modules.get(name))
            if path:
                self.write("import", {"module": name, "path": path, "static": False})

    def namespace(self):
        """The user namespace's names in order, their keys' addresses (None without the bulk
        reader) and their values' identities. No reference to a value outlives the call."""
        user_ns = getattr(self.shell, "user_ns", None)
        if not isinstance(user_ns, dict):
            user_ns = {}
        names = list(user_ns)
        values = list(user_ns.values())
        if len(values) != len(names):  # changed in between by another thread: once more
            names = list(user_ns)
            values = [user_ns.get(n) for n in names]
        if self.addresses is None:
            return names, None, list(map(_identity, values))
        return names, self.addresses(names), self.addresses(values)

    def write_names(self):
        """The `names` record: the names the cell bound or rebound to another object.

        Identities only (no comparison of values, no pickling, no reference kept to a value).
        A dict keeps insertion order, a rebinding keeps its place and new names come last, so
        the new names are the old ones less those deleted, then those added. In the usual
        cell nothing was deleted: the keys' addresses start with the old keys' (one memcmp;
        the old key strings are alive, so equal addresses are the same names), everything
        after them is new, and the values' addresses are compared in parts, C-level (IPython
        rebinds `_i`, `_ii`, `_iii` near the start every cell, so the whole comparison fails),
        splitting only the parts that differ (_differing). Otherwise _paired_by_runs pairs
        the names.
        """
        names, keys, ids = self.namespace()
        old_names, old_keys, old_ids = self.ns_names, self.ns_keys, self.ns_ids
        if keys is not None and keys.startswith(old_keys):
            bound = []
            if not ids.startswith(old_ids):
                _differing(names, ids, 0, old_ids, 0, len(old_names), self.unit, bound)
            bound += names[len(old_names):]
        else:
            bound = _paired_by_runs(names, ids, old_names, old_ids, self.unit)
        self.ns_names, self.ns_keys, self.ns_ids = names, keys, ids
        bound = [name for name in bound if type(name) is str and name[:1] != "_"
                 and name not in _SHELL_NAMES]  # a non-str key (globals()[1] = x): no name
        self.write("names", {"bound": bound})

    # -- audit hook handlers (one per wanted event) --------------------------------------

    def on_open(self, args):
        path = _path_arg(args[0])
        if path is None:
            return
        given = _as_named(path)
        path = _absolute(path)
        if path == self.log_path:
            return
        mode = _open_mode(args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else None)
        # The event comes before the attempt, and a failed read is not a use.
        if mode == "r" and not os.path.exists(path):
            return
        self.write_path("open", path, mode, given)

    def on_popen(self, args):
        executable, argv = args[0], _argv(args[1])
        path = _which(_path_arg(executable) or (argv[0] if argv else ""))
        self.last_popen = (path, argv)
        self.write("exec", {"path": path, "argv": argv})

    def on_exec(self, args):
        self.write("exec", {"path": _which(_path_arg(args[0]) or ""), "argv": _argv(args[1])})

    def on_posix_spawn(self, args):
        path, argv = _which(_path_arg(args[0]) or ""), _argv(args[1])
        if self.last_popen == (path, argv):
            self.last_popen = None  # subprocess.Popen already logged this one (3.13+)
            return
        self.write("exec", {"path": path, "argv": argv})

    def on_system(self, args):
        command = _path_arg(args[0]) or ""
        self.write("exec", {"path": "/bin/sh", "argv": ["/bin/sh", "-c", command]})

    def on_listdir(self, args):
        path = _path_arg(args[0]) if args and args[0] is not None else "."
        if path is not None:
            self.write_path("listdir", _absolute(path), None, _as_named(path))

    def on_glob(self, args):
        pattern = _path_arg(args[0])
        if pattern:
            self.write_path("listdir", _absolute(pattern), None, _as_named(pattern))


def _make_hook(handlers):
    """The audit hook: a closure, as every audited event of the process pays for its call
    (id() and sys._getframe() are audited too); unwanted events cost one set lookup."""
    wanted = frozenset(handlers)

    def hook(event, args):
        if event in wanted:
            try:
                handlers[event](args)
            except Exception:
                pass  # never let logging break the user's code

    return hook


def _address_reader():
    """(addresses, word): addresses(values) gives the addresses of a list's items, a machine
    word each, as bytes, read from the list's own array of pointers in one C call; None where
    that cannot be done (no ctypes, or the list layout fails the check against id()).

    The list is the caller's, alive and unshared while it is read (string_at is a
    PYFUNCTYPE: it holds the GIL), and no reference outlives it: like object.__hash__, an
    address says which object, not what it holds.
    The layout read is CPython's PyListObject (var header, ob_item, allocated), stable from
    3.8 to 3.13; the check below falls back to object.__hash__ on anything else.
    """
    try:
        import ctypes

        word = ctypes.sizeof(ctypes.c_void_p)
        items_at = list.__basicsize__ - 2 * word  # ob_item: after the header, before allocated
        pointer_at, string_at = ctypes.c_void_p.from_address, ctypes.string_at

        def addresses(values):
            if not values:
                return b""
            return string_at(pointer_at(id(values) + items_at).value, word * len(values))

        probe = [object(), "probe", None, [], 2**70]
        expected = b"".join(id(value).to_bytes(word, sys.byteorder) for value in probe)
        if addresses(probe) != expected or memoryview(expected).cast("P").itemsize != word:
            return None
        return addresses, word
    except Exception:
        return None


def _paired_by_runs(names, ids, old_names, old_ids, unit):
    """The names bound, when names were deleted (or keys are not read in bulk): each name is
    paired with its old self by walking both lists in runs of equal names, and within a run a
    name changed where its identity did (_changed); a deletion starts the next run at the old
    list's next occurrence of the name (list.index). Names past the runs (added, or too many
    deletions) by a lookup by name. No Python-level loop over the names."""
    bound = []
    at, old_at = 0, 0
    skipped = []  # old positions no run paired: names deleted, or re-added at the end
    for _ in range(_RUNS):
        run = _equal_run(names, at, old_names, old_at)
        bound += _changed(names, ids, at, old_ids, old_at, run, unit)
        at += run
        old_at += run
        if at == len(names) or old_at == len(old_names):
            break
        try:  # names[at] differs from old_names[old_at]: that one was deleted
            paired = old_names.index(names[at], old_at + 1)
        except ValueError:
            break  # names[at] is not among the old ones left: added, as all after it
        skipped.append((old_at, paired))
        old_at = paired
    if at < len(names):
        tail = names[at:]
        skipped.append((old_at, len(old_names)))
        # Only old names no run paired can come back among the tail's names.
        old_words = _words(old_ids, unit)
        old_id = {}
        for start, stop in skipped:
            # zip(strict=) needs 3.10; the slices are of equal length by construction
            old_id.update(zip(old_names[start:stop], old_words[start:stop]))  # noqa: B905
        bound += compress(tail, map(ne, _words(ids, unit)[at:], map(old_id.get, tail)))
    return bound


def _part(items, start, count):
    """items[start:start + count], without the copy when that is the whole list."""
    return items if start == 0 and count == len(items) else items[start:start + count]


def _words(ids, unit):
    """Identities one per name: the list itself, or the address bytes seen as words."""
    return ids if unit == 1 else memoryview(ids).cast("P")


def _equal_run(names, at, old_names, old_at):
    """How many names from names[at] equal those from old_names[old_at], in order."""
    count = min(len(names) - at, len(old_names) - old_at)
    if _part(names, at, count) == _part(old_names, old_at, count):
        return count
    run = 0
    while names[at + run:at + run + _CHUNK] == old_names[old_at + run:old_at + run + _CHUNK]:
        run += _CHUNK
    while names[at + run] == old_names[old_at + run]:
        run += 1
    return run


def _changed(names, ids, at, old_ids, old_at, count, unit):
    """The names in names[at:at + count] whose identity differs from the old one at the same
    offset in old_ids[old_at:] (identities `unit` items each: 1 in a list, a word in bytes)."""
    if _part(ids, at * unit, count * unit) == _part(old_ids, old_at * unit, count * unit):
        return []  # the comparison stops at the first difference: cheap when it fails early
    changed = []
    _differing(names, ids, at, old_ids, old_at, count, unit, changed)
    return changed


def _differing(names, ids, at, old_ids, old_at, count, unit, changed):
    """Append to changed the names of a range whose identities differ from the old ones:
    the range split in _PARTS parts, only the parts that differ split again, the last ones
    (at most _WALKED names) walked."""
    if count <= _WALKED:
        now = _words(ids[at * unit:(at + count) * unit], unit)
        before = _words(old_ids[old_at * unit:(old_at + count) * unit], unit)
        changed += compress(names[at:at + count], map(ne, now, before))
        return
    step = max(_WALKED, -(-count // _PARTS))
    for start in range(0, count, step):
        size = min(step, count - start)
        if (ids[(at + start) * unit:(at + start + size) * unit]
                != old_ids[(old_at + start) * unit:(old_at + start + size) * unit]):
            _differing(names, ids, at + start, old_ids, old_at + start, size, unit, changed)


def _absolute(path):
    """os.path.abspath(path), without its normpath when there is nothing to normalise (no
    `.` or `..` component, no doubled or trailing slash: every such path has "/." or "//" or
    ends in "/"); on the open hook's hot path that is most of its cost."""
    if path[:1] != "/":
        cwd = os.getcwd()
        path = (cwd if cwd != "/" else "") + "/" + path
    if "/." in path or "//" in path or path[-1:] == "/":
        return os.path.normpath(path)
    return path


def _as_named(path):
    """The relative name the code used: `path` when relative, or what follows the working
    directory in a path built as cwd + relative ('/nb/../src/x.py', as the import system
    builds them from a relative sys.path entry); None otherwise."""
    if not os.path.isabs(path):
        return path
    if "/../" not in path:
        return None
    cwd = os.getcwd()
    return path[len(cwd) + 1:] if path.startswith(cwd + "/") else None


def _path_arg(value):
    """A path argument as str; None for file descriptors and other non-paths."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return os.fsdecode(value)
    if hasattr(value, "__fspath__"):
        return _path_arg(value.__fspath__())
    return None


def _open_mode(mode, flags):
    """Access mode ("r", "w", "rw") from the event's open flags, else its mode string."""
    if isinstance(flags, int) and flags:
        access = flags & 3  # O_ACCMODE
        if access == 2 and flags & os.O_TRUNC:
            return "w"  # truncated: nothing that was there is read
        return {0: "r", 1: "w"}.get(access, "rw")
    if isinstance(mode, str):
        if "+" in mode:
            return "w" if "w" in mode else "rw"  # "w+" truncates first
        if "w" in mode or "a" in mode or "x" in mode:
            return "w"
    return "r"


def _argv(args):
    if isinstance(args, (str, bytes)) or hasattr(args, "__fspath__"):
        return [_path_arg(args) or ""]
    try:
        return [_path_arg(a) or str(a) for a in args]
    except TypeError:
        return []


def _which(program):
    """Absolute path of a program the way exec*p would find it (no shutil: keep imports few)."""
    if not program or os.sep in program:
        return os.path.abspath(program) if program else program
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    return program
