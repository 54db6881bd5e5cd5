"""The strace text parser on traces recorded on this machine (tests/data/strace/README.txt says
how) and on a hand-made interleaving, one syntax case per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from auditor.events import Access, CellMark, Connect, Exec, Exit, Spawn
from auditor.record.strace_parse import OPENED_LIMIT, StraceParser, parse_strace, unescape

DATA = Path(__file__).parent / "data" / "strace"
NAMES = "/tmp/flo-strace/names/"


def parse(name: str, cwd: str | None = "/tmp/flo-strace") -> tuple[list, StraceParser]:
    parser = StraceParser(cwd)
    with open(DATA / name, encoding="utf-8", errors="surrogateescape") as lines:
        return list(parser.parse(lines)), parser


def accesses(events: list, prefix: str = "") -> list[tuple[str, str, str | None]]:
    return [(e.path, e.mode, e.real) for e in events
            if isinstance(e, Access) and e.path.startswith(prefix)]


# --- files.txt: weird names, dirfds, open/creat/openat2, modes, marks --------------------------

@pytest.fixture(scope="module")
def files() -> tuple[list, StraceParser]:
    return parse("files.txt")


WEIRD = ["with space", 'quo"te', "back\\slash", "nön-ascii ü", "new\nline", "tab\there",
         "gt>lt<", "paren) = 3", os.fsdecode(b"\xff\xfebytes")]


def test_escaped_names_decode_to_the_real_names(files):
    events, parser = files
    found = accesses(events, NAMES)
    for name in WEIRD:
        path = NAMES + name
        # written then read back, each with the kernel's path (the -y decoration) as `real`
        assert (path, "w", path) in found, name
        assert (path, "r", path) in found, name
    assert parser.skipped == 0


def test_relative_paths_resolve_against_dirfd_and_cwd(files):
    found = accesses(files[0], NAMES)
    # openat(3</tmp/flo-strace/names>, "new\nline", O_RDWR)
    assert (NAMES + "new\nline", "rw", NAMES + "new\nline") in found
    # after chdir("..") then open("names/quo\"te"): the plain open syscall, no dirfd at all
    assert found.count((NAMES + 'quo"te', "r", NAMES + 'quo"te')) == 2
    # after fchdir(3</tmp/flo-strace/names>): openat(AT_FDCWD, "with space")
    assert found.count((NAMES + "with space", "r", NAMES + "with space")) == 2


def test_open_modes_creat_and_openat2(files):
    found = accesses(files[0])
    assert (NAMES + "appended", "w", NAMES + "appended") in found  # O_WRONLY|O_CREAT|O_APPEND
    assert (NAMES + "created by creat", "w", NAMES + "created by creat") in found
    assert found.count((NAMES + "back\\slash", "r", NAMES + "back\\slash")) == 2  # + openat2
    assert ("/tmp/flo-strace/names", "d", "/tmp/flo-strace/names") in found


def test_symlinked_directory_keeps_both_paths(files):
    assert ("/tmp/flo-strace/link-dir", "d", "/tmp/flo-strace/real-dir") in accesses(files[0])


def test_failed_open_is_no_access_but_mark_paths_are_cell_marks(files):
    events = files[0]
    assert not [e for e in events if isinstance(e, Access) and "does not exist" in e.path]
    assert not [e for e in events if isinstance(e, Access) and ".flo-backpack-mark" in e.path]
    marks = [(e.seq, e.phase) for e in events if isinstance(e, CellMark)]
    assert marks == [(0, "start"), (0, "end")]
    assert isinstance(events[-1], Exit) and events[-1].status == 0


def test_times_come_from_ttt_in_trace_order(files):
    times = [e.t for e in files[0]]
    assert times == sorted(times)
    assert times[0] == pytest.approx(1795980486.42, abs=0.1)


# --- processes.txt: threads, fork, vfork, execve of a #! script, execveat, renames, connect -----

ROOT = 5414  # the pids of that recording


@pytest.fixture(scope="module")
def procs() -> tuple[list, StraceParser]:
    return parse("processes.txt")


def test_thread_creation_and_thread_events_carry_the_process_pid(procs):
    events, parser = procs
    assert Spawn(ROOT, 5415, True, pytest.approx(1795980486.457362)) in events
    data = "/tmp/flo-strace/procs/data.txt"
    reads = [e for e in events if isinstance(e, Access) and e.path == data and e.mode == "r"]
    assert {e.pid for e in reads} == {ROOT, 5416, 5418}  # the thread's read is the process's
    assert not [e for e in events if isinstance(e, Exit) and e.pid == 5415]
    assert parser.skipped == 0


def test_fork_child_inherits_cwd_then_changes_it(procs):
    events = procs[0]
    assert Spawn(ROOT, 5416, False, pytest.approx(1795980486.458658)) in events
    # the child chdir'd to /tmp and opened "flo-strace/procs/data.txt"
    child = [e for e in events if isinstance(e, Access) and e.pid == 5416]
    assert [(e.path, e.mode) for e in child] == [("/tmp/flo-strace/procs/data.txt", "r")]
    assert Exit(5416, 7, pytest.approx(1795980486.463233)) in events


def test_vfork_exec_of_a_script_follows_its_spawn(procs):
    events = procs[0]
    kinds = [(type(e).__name__, e.pid) for e in events if e.pid in (5417, 5418)
             or isinstance(e, Spawn) and e.child in (5417, 5418)]
    assert kinds[:2] == [("Spawn", ROOT), ("Exec", 5417)]  # child's early exec held back
    execs = {e.pid: e for e in events if isinstance(e, Exec)}
    assert execs[5417].path == "/tmp/flo-strace/procs/script.sh"  # as executed, made absolute
    assert execs[5417].argv == ["./script.sh"]
    assert execs[5418].path == "/usr/bin/cat" and execs[5418].argv == ["cat", "./data.txt"]
    assert Exit(5417, 3, pytest.approx(1795980486.469604)) in events


def test_execveat_and_exec_from_a_thread(procs):
    execs = {e.pid: e for e in procs[0] if isinstance(e, Exec)}
    assert (execs[5419].path, execs[5419].argv) == ("/usr/bin/true", ["true", "via-fexecve"])
    # a non-leader thread's execve: `<pid changed to 5420 ...>`, the leader's pid runs it
    assert (execs[5420].path, execs[5420].argv) == ("/bin/true", ["true", "from-thread"])
    assert Exit(5420, 0, pytest.approx(1795980486.475841)) in procs[0]


def test_killed_process_has_negative_signal_status(procs):
    assert Exit(5422, -9, pytest.approx(1795980486.476398)) in procs[0]


def test_rename_targets_are_writes(procs):
    renames = [(e.path, e.mode) for e in procs[0] if isinstance(e, Access) and e.real is None]
    assert renames == [("/tmp/flo-strace/procs/moved.txt", "w"),   # rename()
                       ("/tmp/flo-strace/procs/data.txt", "w")]    # renameat(dirfd, ...)


def test_connects_inet_only(procs):
    connects = [e.address for e in procs[0] if isinstance(e, Connect)]
    # connected, then non-blocking (EINPROGRESS); the refused ::1 and the AF_UNIX are not uses
    assert connects == ["127.0.0.1:34837", "127.0.0.1:34837"]


# --- threads.txt: real unfinished/resumed pairs across three threads -----------------------------

def test_interleaved_threads_lose_nothing():
    events, parser = parse("threads.txt")
    assert parser.skipped == 0
    for n in range(3):
        path = f"/tmp/flo-strace/thread-{n}.txt"
        hits = [e for e in events if isinstance(e, Access) and e.path == path]
        assert len(hits) == 15 and {e.pid for e in hits} == {5427} and hits[0].mode == "w"
    assert [e.child for e in events if isinstance(e, Spawn) and e.thread] == [5428, 5429, 5430]


# --- interleaved.txt: hand-made cases a capture rarely shows -------------------------------------

def test_hand_made_interleaving():
    events, parser = parse("interleaved.txt", cwd="/work/nb")
    t = pytest.approx
    assert events == [
        Exec(700, "/usr/bin/python3", ["python3", "run.py"], t(1795990000.0001)),
        # relative to the cwd: the name the program used is kept (data.yml keeps '../x' so)
        Access(700, "/work/nb/data/in put.csv", "r", "/work/nb/data/in put.csv",
               t(1795990000.0003), given="data/in put.csv"),
        Spawn(700, 702, True, t(1795990000.00042)),
        # the thread's open, begun before clone3 returned, is the process's
        Access(700, "/work/nb/thread.txt", "w", "/work/nb/thread.txt", t(1795990000.00044)),
        Spawn(700, 703, False, t(1795990000.00053)),
        # printed before the clone returned; cwd /srv set by the thread, inherited by the child
        Access(703, "/srv/rel/child.txt", "r", "/srv/rel/child.txt", t(1795990000.00052),
               given="rel/child.txt"),
        CellMark(703, 1, "start", t(1795990000.00055)),
        Access(703, "/usr/lib/x86_64-linux-gnu/libz.so.1", "r",
               "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", t(1795990000.00056)),
        Exit(703, -11, t(1795990000.0006)),
        Connect(700, "[2001:db8::1]:443", t(1795990000.0008)),
        Exit(700, 1, t(1795990000.0009)),
        # a pid nobody was seen creating: adopted at the end as a process of its own
        Access(900, "/tmp/orphan.txt", "r", "/tmp/orphan.txt", t(1795990000.0007),
               given="orphan.txt"),
    ]
    # the truncated openat, the resumed read with no start, strace's own "detached" note;
    # the `= ? <unavailable>` line is a syscall with no result, not a parse failure
    assert parser.skipped == 3
    assert any("libm.so" in line for line in parser.skipped_examples)


def test_malformed_lines_are_counted_never_raised():
    lines = ["", "garbage\n", "12 1.5\n",
             "12 1.5 openat(AT_FDCWD</x>, \"a\", O_RDONLY) = 3</x/a>\n",
             "12 1.6 openat(AT_FDCWD</x>, \"unterminated, O_RDONLY) = 3</x/a>\n",
             "12 1.65.3 openat(AT_FDCWD</x>, \"c\", O_RDONLY) = 3</x/c>\n",
             "12 1.66 +++ exited with 9x +++\n",
             "12 1.7 openat(AT_FDCWD</x>, \"b\", O_RDONLY) = 3</x/b>"]
    parser = StraceParser()
    events = list(parser.parse(lines))
    assert [(e.path, e.t) for e in events] == [("/x/a", 1.5), ("/x/b", 1.7)]
    assert parser.skipped == 5


def test_state_stays_per_live_pid_on_a_long_trace():
    def trace():
        yield "1 1.0 execve(\"/bin/sh\", [\"sh\"], 0x1 /* 1 var */) = 0\n"
        for child in range(2, 20_002):
            yield (f"1 1.1 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD, "
                   f"child_tidptr=0x7) = {child}\n")
            yield f"{child} 1.2 openat(AT_FDCWD</w>, \"f\", O_RDONLY) = 3</w/f>\n"
            yield f"{child} 1.3 +++ exited with 0 +++\n"
    parser = StraceParser("/w")
    count = sum(1 for _ in parser.parse(trace()))
    assert count == 1 + 3 * 20_000
    assert len(parser._known) == 1 and len(parser._cwd) == 1 and not parser._pending


def test_unescape():
    assert unescape(r"a\"b\\c\n\t\303\274\x41\1770") == 'a"b\\c\n\tüA\x7f0'
    assert unescape(r"\377") == os.fsdecode(b"\xff")
    assert unescape("plain") == "plain"


def test_parse_strace_function_streams():
    lines = iter(["5 2.0 chdir(\"/data\") = 0\n",
                  "5 2.1 open(\"x/../y.txt\", O_WRONLY|O_TRUNC) = 3</data/y.txt>\n"])
    assert list(parse_strace(lines, cwd="/")) == [Access(5, "/data/y.txt", "w", "/data/y.txt",
                                                         2.1, given="x/../y.txt")]


def test_truncating_read_write_open_is_a_write_not_a_read():
    # Pillow saves with open(..., "w+b"): O_RDWR|O_CREAT|O_TRUNC destroys what was there, so
    # it is a write (an output), while sqlite's O_RDWR|O_CREAT keeps content: a read-write.
    lines = [
        '7 1764444000.000001 openat(AT_FDCWD</w>, "pt.png", O_RDWR|O_CREAT|O_TRUNC|O_CLOEXEC,'
        ' 0666) = 3</w/pt.png>\n',
        '7 1764444000.000002 openat(AT_FDCWD</w>, "db.sqlite", O_RDWR|O_CREAT|O_CLOEXEC, 0644)'
        ' = 4</w/db.sqlite>\n',
    ]
    modes = [(e.path, e.mode) for e in parse_strace(lines, "/w") if isinstance(e, Access)]
    assert modes == [("/w/pt.png", "w"), ("/w/db.sqlite", "rw")]


def test_a_path_built_from_the_cwd_keeps_its_relative_name():
    # Python 3.13's import system opens '<cwd>/../src/pkg/__init__.py' for a relative
    # sys.path entry: the name the program meant is '../src/...'.
    lines = iter(['7 3.0 openat(AT_FDCWD</p/nb>, "/p/nb/../src/pkg/__init__.py", O_RDONLY) = 3'
                  '</p/src/pkg/__init__.py>\n',
                  '7 3.1 openat(AT_FDCWD</p/nb>, "/p/other/../x.txt", O_RDONLY) = 3</p/x.txt>\n'])
    first, second = parse_strace(lines, cwd="/p/nb")
    assert first.path == "/p/src/pkg/__init__.py" and first.given == "../src/pkg/__init__.py"
    assert second.path == "/p/x.txt" and second.given is None  # not built from the cwd


# --- open lines seen before: the parser remembers what a line's text gave ------------------------

class _Forgetful(StraceParser):
    """The parser matching every line afresh, as before it remembered open lines."""

    def _remember(self, rest: str, access: tuple) -> None:
        pass


def _with_repeats(name: str) -> list[str]:
    """A recorded trace with each complete openat line printed again right after itself."""
    out = []
    with open(DATA / name, encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            out.append(line)
            rest = line.split(None, 2)[2] if len(line.split(None, 2)) == 3 else ""
            if rest.startswith("openat(") and "<unfinished ...>" not in rest:
                out.append(line)
    return out


@pytest.mark.parametrize("name", ["files.txt", "processes.txt", "threads.txt",
                                  "interleaved.txt"])
def test_remembered_open_lines_give_the_events_of_matching_each_line(name):
    # Real recordings (threads.txt: unfinished/resumed pairs across threads; files.txt:
    # chdir, fchdir and relative names; interleaved.txt: lines of a child before its clone
    # returns), their open lines repeated so that the second copy is a remembered one.
    lines = _with_repeats(name)
    remembering, forgetful = StraceParser("/tmp/flo-strace"), _Forgetful("/tmp/flo-strace")
    events = list(remembering.parse(lines))
    assert events == list(forgetful.parse(lines))
    assert remembering.skipped == forgetful.skipped
    assert remembering._opened  # the repeats did take the remembered path


def test_an_open_line_again_is_an_access_of_the_process_that_printed_it():
    lines = [
        '10 1.0 openat(AT_FDCWD</w>, "/env/m.py", O_RDONLY|O_CLOEXEC) = 3</env/m.py>\n',
        "10 1.1 clone3({flags=CLONE_VM|CLONE_THREAD, exit_signal=0}, 88) = 11\n",
        "10 1.2 clone(child_stack=NULL, flags=SIGCHLD) = 12\n",
        '11 1.3 openat(AT_FDCWD</w>, "/env/m.py", O_RDONLY|O_CLOEXEC) = 3</env/m.py>\n',
        '12 1.4 openat(AT_FDCWD</w>, "/env/m.py", O_RDONLY|O_CLOEXEC) = 3</env/m.py>\n',
        '13 1.5 openat(AT_FDCWD</w>, "/env/m.py", O_RDONLY|O_CLOEXEC) = 3</env/m.py>\n',
        '12 1.6 chdir("/other") = 0\n',
        '12 1.7 openat(AT_FDCWD, "rel.txt", O_RDONLY) = 4\n',
        '12 1.8 chdir("/w") = 0\n',
        '12 1.9 openat(AT_FDCWD, "rel.txt", O_RDONLY) = 4\n',
    ]
    found = [(e.pid, e.path, e.t) for e in parse_strace(lines, "/w") if isinstance(e, Access)]
    assert found == [(10, "/env/m.py", 1.0), (10, "/env/m.py", 1.3),  # a thread: its process
                     (12, "/env/m.py", 1.4),
                     (12, "/other/rel.txt", 1.7), (12, "/w/rel.txt", 1.9),  # relative: the cwd
                     (13, "/env/m.py", 1.5)]  # a pid never seen created comes out at the end


def test_a_file_named_like_a_failed_open_is_still_opened():
    lines = [
        '5 1.0 openat(AT_FDCWD</t>, "/t/x) = -1 Ey", O_RDONLY) = 3</t/x) = -1 Ey>\n',
        '5 1.1 openat(AT_FDCWD, "/t/y) = -1 Ez", O_RDONLY) = 4\n',
        '5 1.2 openat(AT_FDCWD</t>, "/t/x) = -1 Ey", O_RDONLY) = -1 EACCES (Permission denied)\n',
        '5 1.3 openat(AT_FDCWD</t>, "/t/z", O_RDONLY) = -1 ENOENT (No such file or directory)\n',
    ] * 2  # the second time from what the parser remembers
    parser = StraceParser("/t")
    found = [(e.path, e.t) for e in parser.parse(lines) if isinstance(e, Access)]
    assert found == [("/t/x) = -1 Ey", 1.0), ("/t/y) = -1 Ez", 1.1)] * 2
    assert parser.skipped == 0


def test_what_the_parser_remembers_stays_bounded():
    def trace():
        for n in range(OPENED_LIMIT * 2 + 10):
            yield f'1 1.{n} openat(AT_FDCWD</w>, "/w/f{n}", O_RDONLY) = 3</w/f{n}>\n'
    parser = StraceParser("/w")
    assert sum(1 for _ in parser.parse(trace())) == OPENED_LIMIT * 2 + 10
    assert len(parser._opened) <= OPENED_LIMIT
