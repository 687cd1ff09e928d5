"""docs/cli.md and `ferry help` describe the same commands and flags."""
import os
import re
import subprocess

from conftest import ROOT, binary


def help_text(*command):
    return subprocess.run([binary("ferry"), "help", *command], capture_output=True, text=True, check=True).stdout


def subcommands(*command):
    text = help_text(*command)
    if "SUBCOMMANDS:" not in text:
        return []
    block = text.split("SUBCOMMANDS:", 1)[1]
    return [m.group(1) for m in re.finditer(r"^  ([a-z][\w-]*)(?:\s{2,}|$)", block, re.M)]


def leaf_commands(prefix=()):
    out = []
    for sub in subcommands(*prefix):
        path = prefix + (sub,)
        out += leaf_commands(path) if subcommands(*path) else [path]
    return out


def flags(text):
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", text)) - {"--help", "--version"}


def sections():
    doc = open(os.path.join(ROOT, "docs", "cli.md")).read()
    parts = re.split(r"^## (ferry [^\n]+)\n", doc, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_command_and_flag_is_documented_and_every_documented_one_exists():
    docs = sections()
    commands = leaf_commands()
    assert ("probe",) in commands and ("config", "check") in commands, commands
    for command in commands:
        name = "ferry " + " ".join(command)
        assert name in docs, f"docs/cli.md has no section '## {name}'"
        options = help_text(*command).split("OPTIONS:", 1)[-1]
        assert flags(options) == flags(docs[name]), (name, flags(options), flags(docs[name]))
    assert set(docs) == {"ferry " + " ".join(c) for c in commands}, "a documented command that ferry does not have"
