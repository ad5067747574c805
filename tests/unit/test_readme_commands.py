"""README.md and docs/*.md against the code, so that they cannot drift from it: every command they show runs a
tool that exists with flags its parser has (and choices it offers), every path they name exists, the Debian
packages they say the scripts install are the ones the scripts install, and the Redis key they describe is the
one the cache writes. Each failure names the document's line. (The TOML examples: test_readme_config.py; the
metric names, the batch_score header and a live Redis key: tests/system/test_readme.py.)"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference_server.cache.memory import cache_key
from inference_server.cache.redis_tier import KEY_PREFIX
from tests.support.docs import (
    DOCS,
    REDIS_KEY,
    ROOT,
    Code,
    brace_expand,
    command_lines,
    documented,
    fenced,
    inline,
)

PY = sys.executable
SHELL_LANGUAGES = ("", "bash", "sh", "console")

# Long flags of other programs the documents run, by program; a new one is added here on purpose.
EXTERNAL = {
    "curl": {"--cacert", "--cert", "--key"},
    "docker": {"--build-arg", "--gpus"},
    "eksctl": {"--cluster", "--namespace", "--name", "--attach-policy-arn", "--approve",
               "--override-existing-serviceaccounts"},
    "gcloud": {"--cluster", "--machine-type", "--accelerator", "--enable-autoscaling", "--min-nodes", "--max-nodes",
               "--disk-size", "--workload-metadata", "--role", "--member"},
    "helm": {"--install"},
    "kubectl": {"--previous", "--dry-run", "--from-literal", "--from-file"},
    "perf_analyzer": {"--streaming", "--request-parameter"},
    "pip": {"--constraint"},
}

INVOCATION = re.compile(r"(?<![\w/.-])(?:(?:\.venv/bin/)?python3?\s+-m\s+(?P<module>[A-Za-z_][\w.]*)"
                        r"|(?P<path>(?:\./)?(?:scripts|clients/python|benchmarks)/[\w.-]+(?:/[\w.-]+)*))")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
SEPARATORS = re.compile(r"\s(?:\|\|?|&&|;)\s|[;()]")  # in a shell block
SPAN_SEPARATORS = re.compile(r"\s(?:&&|;)\s|[;()]")  # in a span `|` is also a usage line's "or"


@dataclass(frozen=True)
class Tool:
    name: str  # as the documents invoke it
    argv: tuple[str, ...] | None  # runs its own --help when "--help" is appended; None: it takes no flags


@dataclass(frozen=True)
class Options:
    flags: frozenset[str]
    choices: dict[str, frozenset[str]]
    subcommands: frozenset[str]


@functools.cache
def options(argv: tuple[str, ...]) -> Options:
    """The flags (and each flag's choices) that a tool's --help lists as options."""
    done = subprocess.run([*argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "400"})
    assert done.returncode == 0, f"{' '.join(argv)} --help failed: {done.stderr}"
    flags: set[str] = set()
    choices: dict[str, frozenset[str]] = {}
    for line in done.stdout.splitlines():
        head = re.split(r"\s{2,}", line.strip())[0]
        if head.startswith("-"):
            flags.update(FLAG.findall(head))
            for flag, values in re.findall(r"(--[\w-]+) \{([^}]*)\}", head):
                choices[flag] = frozenset(values.split(","))
    usage = done.stdout.split("\n\n", 1)[0] if done.stdout.startswith("usage: ") else ""  # argparse's
    subcommands = {w for group in re.findall(r"(?<![-\w])\{([^}]*)\}", re.sub(r"--[\w-]+ \{[^}]*\}", "", usage))
                   for w in group.split(",")}
    return Options(frozenset(flags), choices, frozenset(subcommands))


def resolve(match: re.Match[str]) -> Tool | str:
    """The tool a command invokes, or why it cannot be run."""
    if module := match.group("module"):
        if importlib.util.find_spec(module) is None:
            return f"no module {module!r}"
        return Tool(f"python -m {module}", (PY, "-m", module))
    name = match.group("path")
    path = ROOT / name.removeprefix("./")
    if not path.exists():
        return f"no file {name}"
    if path.is_dir() or (path.suffix and path.suffix != ".py"):
        return Tool(name, None)  # a path, not a tool
    text = path.read_text()
    if path.suffix == ".py":
        return Tool(name, (PY, str(path)) if "argparse" in text else None)
    if passed := re.search(r'^exec \.venv/bin/python -m ([\w.]+) .*"\$@"', text, re.M):  # scripts/serve, test
        return Tool(f"{name} (python -m {passed.group(1)})", (PY, "-m", passed.group(1)))
    return Tool(name, ("bash", str(path)) if re.search(r"^\s*-h\|--help\)", text, re.M) else None)


def segments(command: str, separators: re.Pattern[str]) -> list[str]:
    return [s.strip() for s in separators.split(command.split(" #")[0]) if s.strip()]


@dataclass(frozen=True)
class Use:
    """Flags given to one tool on one line of a document."""

    where: str
    tool: Tool
    args: list[str]


def commands(code: Code) -> tuple[list[Use], list[str], list[tuple[str, str]]]:
    """(uses of the project's tools, problems, prose flags as (where, flag))."""
    uses, problems, loose = [], [], []
    for number, line in command_lines(code):
        where = f"{code.path.relative_to(ROOT)}:{number}"
        for segment in segments(line, SEPARATORS if code.fenced else SPAN_SEPARATORS):
            found = INVOCATION.search(segment)
            if found:
                tool = resolve(found)
                if isinstance(tool, str):
                    if found.group("module") or FLAG.search(segment, found.end()):  # else a path, for the path test
                        problems.append(f"{where}: {tool} ({segment})")
                else:
                    uses.append(Use(where, tool, segment[found.end():].split()))
                continue
            words = [w for w in segment.split() if not re.fullmatch(r"[A-Z_]+=\S*", w)]
            flags = FLAG.findall(segment)
            if not flags:
                continue
            program = words[0].rsplit("/", 1)[-1] if words else ""
            if program in EXTERNAL:
                problems += [f"{where}: {program} {f}: not a flag this test knows of {program} (add it to EXTERNAL)"
                             for f in flags if f not in EXTERNAL[program]]
            elif words and words[0].startswith("--"):
                loose += [(where, f) for f in flags]
            else:
                problems.append(f"{where}: flags {flags} of an unknown program in {segment!r}")
    return uses, problems, loose


def shell_code(path: Path) -> list[Code]:
    return [c for c in fenced(path) if c.language in SHELL_LANGUAGES] + inline(path)


def test_every_command_runs_a_tool_that_exists_with_flags_its_parser_has():
    """A command (`python -m X ...`, `clients/python/X.py ...`, `./scripts/X ...`) names a module or file that
    exists, and every --flag after it is one of that tool's options in its --help (with a value among its
    choices, where it has choices). A flag on its own in the prose is the server's, or one of a tool the same
    paragraph runs, or one of another program (curl, docker, ...) that paragraph names."""
    server = Tool("python -m inference_server", (PY, "-m", "inference_server"))
    problems: list[str] = []
    checks: list[Use] = []
    loose: list[tuple[str, str, Code]] = []
    for path in DOCS:
        for code in shell_code(path):
            uses, found, flags = commands(code)
            problems += found
            checks += uses
            loose += [(where, flag, code) for where, flag in flags]
    with ThreadPoolExecutor(8) as pool:  # each tool's --help once, at once
        list(pool.map(options, {u.tool.argv for u in checks if u.tool.argv is not None} | {server.argv}))
    assert len(checks) > 30 and len(loose) > 20, (len(checks), len(loose))  # the parsing found the commands

    for use in checks:
        flags = [(i, a) for i, a in enumerate(use.args) if FLAG.fullmatch(a.strip("[]|`'\""))]
        if not flags:
            continue
        if use.tool.argv is None:
            problems.append(f"{use.where}: {use.tool.name} takes no flags, but the document gives it "
                            f"{[a for _, a in flags]}")
            continue
        argv = use.tool.argv
        known = options(argv)
        if use.args and use.args[0] in known.subcommands:
            argv = (*argv, use.args[0])
            known = options(argv)
        for i, raw in flags:
            flag = raw.strip("[]|`'\"")
            if flag not in known.flags:
                problems.append(f"{use.where}: {use.tool.name} has no {flag} (its --help: "
                                f"{' '.join(sorted(known.flags))})")
            elif flag in known.choices and i + 1 < len(use.args):
                value = use.args[i + 1].strip("[]|`'\"")
                if re.fullmatch(r"[a-z][\w-]*", value) and value not in known.choices[flag]:
                    problems.append(f"{use.where}: {use.tool.name} {flag} {value}: not one of "
                                    f"{sorted(known.choices[flag])}")

    server_flags = options(server.argv).flags
    for where, flag, code in loose:
        allowed = set(server_flags)
        for other in INVOCATION.finditer(code.block):
            tool = resolve(other)
            if isinstance(tool, Tool) and tool.argv is not None:
                allowed |= options(tool.argv).flags
                allowed |= {f for sub in options(tool.argv).subcommands for f in options((*tool.argv, sub)).flags}
        for program, flags in EXTERNAL.items():
            if re.search(rf"\b{program}\b", code.block):
                allowed |= flags
        if flag not in allowed:
            problems.append(f"{where}: {flag} is not a flag of the server, nor of a tool this paragraph runs")
    assert not problems, "\n".join(problems)


PATH = re.compile(r"(?<![\w/.$~-])(?:\./)?((?:scripts|clients|benchmarks|tests|k8s|docs|inference_server|protos)/"
                  r"[\w./{},*-]*|Dockerfile(?:\.gpu)?\b|pyproject\.toml)(?!<)")


def ignored_prefixes() -> list[str]:
    return [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()
            if line.strip().endswith("/") and "/" in line.strip()[:-1]]


def written_by_a_benchmark(name: str) -> bool:
    """A result file that a benchmark writes (a GPU check's, say) and that need not be committed."""
    path = Path(name)
    return path.parent == Path("benchmarks/results") and any(
        f'"{path.name}"' in source.read_text() for source in (ROOT / "benchmarks").glob("*.py"))


def test_every_path_the_documents_name_exists():
    """Files and directories of this repository named anywhere in the documents (`{a,b}` expanded, `*`
    globbed); paths under a git-ignored directory (made at run time), `<placeholder>` paths and the results a
    benchmark writes (its source names the file) are left out."""
    ignored = ignored_prefixes()
    problems, seen = [], 0
    for path in DOCS:
        text = path.read_text()
        for m in PATH.finditer(text):
            name = m.group(1).rstrip(".,")
            if text[m.end():m.end() + 1] == "<" or any(name.startswith(p) for p in ignored):
                continue
            for one in brace_expand(name):
                seen += 1
                if not (list(ROOT.glob(one)) if "*" in one else (ROOT / one).exists() or written_by_a_benchmark(one)):
                    problems.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: "
                                    f"{one} does not exist")
    assert seen > 50, seen
    assert not problems, "\n".join(problems)


# -- the Debian packages the scripts install -------------------------------------------------------------------

SCRIPTS = ("scripts/serve", "scripts/test")


def apt_calls(text: str) -> list[str]:
    """The arguments of every apt_install call in a shell script (not its definition, not comments)."""
    calls = []
    for line in text.splitlines():
        code = line.split(" #")[0]
        if code.lstrip().startswith("#") or "apt_install()" in code:
            continue
        calls += [m.group(1).strip() for m in re.finditer(r"\bapt_install\b([^|&;]*)", code)]
    return calls


def venv_packages() -> set[str]:
    done = subprocess.run(["bash", "-c", f'source scripts/_setup.sh; venv_packages "{PY}"'], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def generic(package: str) -> str:
    return re.sub(r"^python3\.\d+-venv$", "python3.N-venv", package)


def installed_by(script: str) -> set[str]:
    """What a script apt-installs: its own apt_install calls with literal names, and setup_venv's."""
    text = (ROOT / script).read_text()
    packages = {p for call in apt_calls(text) for p in shlex.split(call)}
    if re.search(r"^\s*setup_venv\b", text, re.M):
        packages |= venv_packages()
    return {generic(p) for p in packages}


def test_the_packages_the_readme_lists_are_those_the_scripts_apt_install():
    setup = apt_calls((ROOT / "scripts/_setup.sh").read_text())
    assert setup == ['$(venv_packages "$python")'], f"scripts/_setup.sh has apt_install calls the test does not " \
                                                    f"know: {setup}"
    readme = (ROOT / "README.md").read_text()
    rows = {m.group(1): (m.group(2), readme.count("\n", 0, m.start()) + 1)
            for m in re.finditer(r"^\| `\./(scripts/\w+)` \|(.*)\|$", readme, re.M)}
    assert set(rows) == set(SCRIPTS), f"README's apt table names {sorted(rows)}"
    for script in SCRIPTS:
        cells, line = rows[script]
        listed = {w for w in re.findall(r"`([^`]+)`", cells) if re.fullmatch(r"[a-z0-9][a-zA-Z0-9.+-]*", w)}
        assert listed == installed_by(script), f"README.md:{line}: lists {sorted(listed)} for {script}, which " \
                                               f"apt-installs {sorted(installed_by(script))}"
    assert installed_by("scripts/test") >= {"prometheus", "redis-server", "python3-venv", "python3.N-venv"}


def test_inference_server_no_apt_skips_apt_get(tmp_path):
    """INFERENCE_SERVER_NO_APT=1 makes apt_install say what is missing and fail without running apt-get; without
    it, as root, apt-get runs (a stand-in on PATH records the call). Documented where the scripts are."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "apt-get").chmod(0o755)

    def apt_install(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", "source scripts/_setup.sh; apt_install pkg-a pkg-b"], cwd=ROOT,
                              capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env})

    skipped = apt_install(INFERENCE_SERVER_NO_APT="1")
    assert skipped.returncode == 1 and "INFERENCE_SERVER_NO_APT=1" in skipped.stderr and "pkg-a pkg-b" in \
        skipped.stderr and not calls.exists()
    installed = apt_install(INFERENCE_SERVER_NO_APT="0")
    if os.getuid() == 0:
        assert installed.returncode == 0, installed.stderr
        assert calls.read_text().splitlines() == ["update -qq", "install -y -qq pkg-a pkg-b"]
    else:
        assert installed.returncode == 1 and "please install: pkg-a pkg-b" in installed.stderr
    for name in ("README.md", "scripts/_setup.sh", *SCRIPTS):
        assert "INFERENCE_SERVER_NO_APT=1" in (ROOT / name).read_text(), f"{name} does not document it"


# -- the response cache's Redis key ----------------------------------------------------------------------------

def test_the_documented_redis_key_is_the_one_the_cache_writes():
    """README's `inference_server:<model>:<version>:<revision>:<digest>` against the key the Redis tier sends
    (KEY_PREFIX + cache_key), with `<digest>` as long as the digest is."""
    template, where = documented(REDIS_KEY)
    parts = {"model": "mnist", "version": "7", "revision": "0123abcd"}
    key = KEY_PREFIX + cache_key(parts["model"], parts["version"], {"x": ("FP32", np.zeros((1, 2), np.float32))},
                                 ["y"], parts["revision"])
    digest = cache_key("m", "1", {}, [], "").rsplit(b":", 1)[-1]
    pattern = "".join(re.escape(piece) if i % 2 == 0 else
                      (f".{{{len(digest)}}}" if piece == "digest" else re.escape(parts.get(piece, f"<{piece}>")))
                      for i, piece in enumerate(re.split(r"<(\w+)>", template)))
    assert re.fullmatch(pattern, key.decode("latin-1"), re.S), \
        f"{where}: {template} does not describe the key the cache writes: {key!r}"
    readme = (ROOT / "README.md").read_text()
    assert f"`<digest>` being the {len(digest)} raw bytes" in readme, f"{where}: the digest's length"
