"""Rules of the source tree that the compiler does not enforce: which module may import which
(docs/architecture.md), and that descriptor system calls are made only through FerrySystem's
wrapper (Sources/FerrySystem/Syscall.swift). Read from the files, so a change that breaks a rule
fails here with the file and line."""
import os
import re

from conftest import ROOT

SOURCES = os.path.join(ROOT, "Sources")

# Module -> modules of this package it must not import (lower layers never import higher ones).
FORBIDDEN = {
    "FerryCore": {"FerrySystem", "FerryWire", "FerryTLS", "FerryTURN", "FerrySignal", "FerryConfig", "FerryServer", "FerryClient", "FerryPeer"},
    "FerrySystem": {"FerryWire", "FerryTLS", "FerryTURN", "FerrySignal", "FerryConfig", "FerryServer", "FerryClient", "FerryPeer"},
    "FerryWire": {"FerrySystem", "FerryTLS", "FerryTURN", "FerrySignal", "FerryConfig", "FerryServer", "FerryClient", "FerryPeer"},
    "FerryTURN": {"FerrySystem", "FerryTLS", "FerrySignal", "FerryConfig", "FerryServer", "FerryClient", "FerryPeer"},
    "FerrySignal": {"FerrySystem", "FerryTURN", "FerryConfig", "FerryServer", "FerryClient", "FerryPeer"},
    # The peer side: pure state machines, then their I/O shell; neither reaches into the server.
    "FerryClient": {"FerrySystem", "FerryTURN", "FerryConfig", "FerryServer", "FerryPeer"},
    "FerryPeer": {"FerryTURN", "FerryConfig", "FerryServer"},
    "FerryConfig": {"FerryServer", "FerryClient", "FerryPeer"},
    "FerryServer": {"FerryClient", "FerryPeer"},
}


def swift_files(module):
    for base, _, files in os.walk(os.path.join(SOURCES, module)):
        for name in files:
            if name.endswith(".swift"):
                yield os.path.join(base, name)


def test_modules_import_only_lower_layers():
    broken = []
    for module, forbidden in FORBIDDEN.items():
        for path in swift_files(module):
            for n, line in enumerate(open(path), 1):
                m = re.match(r"\s*(?:@testable\s+|@_exported\s+)?import\s+(\w+)", line)
                if m and m.group(1) in forbidden:
                    broken.append(f"{os.path.relpath(path, ROOT)}:{n}: {module} imports {m.group(1)}")
    assert not broken, "\n".join(broken)


# Direct descriptor calls: close/read/write/shutdown through Glibc, epoll_ctl/epoll_wait anywhere.
DIRECT = re.compile(r"\bGlibc\.(close|read|write|shutdown|recv|send)\(|(?<![\w.])(epoll_ctl|epoll_wait|shutdown)\(")


def test_descriptor_calls_go_through_the_syscall_wrapper():
    wrapper = os.path.join(SOURCES, "FerrySystem", "Syscall.swift")
    broken = []
    for module in os.listdir(SOURCES):
        for path in swift_files(module):
            if path == wrapper:
                continue
            for n, line in enumerate(open(path), 1):
                code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', line.split("//", 1)[0])  # not in strings or comments
                if DIRECT.search(code) and not re.search(r"\bfunc\s", code):
                    broken.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert not broken, "call these through FerrySystem (Syscall.swift, Sockets, Files):\n" + "\n".join(broken)


def test_the_rules_see_what_they_check():
    # The walk finds the modules and an import it allows, so the tests above cannot pass vacuously.
    assert any("import FerryCore" in open(p).read() for p in swift_files("FerryWire"))
    assert DIRECT.search("_ = Glibc.close(fd)") and DIRECT.search("epoll_wait(a, b, c, d)")
    assert not DIRECT.search("fd.close()") and not DIRECT.search("sysEpollWait(a, b, c, d)")
