"""The README and docs/ say only what works: every documented command and option exists, the
Python examples compile, import what exists and run on the embedded demo, and every link
between the markdown files resolves to a file and, with ``#anchor``, to a heading in it.

A fenced block preceded by ``<!-- docs-test: compile-only -->`` is compiled and its imports
resolved, but not run.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from fedsyn.cli.main import app
from tests.helpers import cut_fits_short

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "console", "shell"}
COMPILE_ONLY = "<!-- docs-test: compile-only -->"
# Flags of Flower's own programs that the docs name in prose (fedsyn passes or declines them).
FOREIGN_OPTIONS = {"--enable-supernode-auth", "--database", "--trusted-entities"}
# The examples' fits, cut to ~16 DP-SGD steps: after 1 step (0.05 epochs) the generator is its
# random init (ages sd 4) and the example's age 70-90 condition failed 1 run in 6.
QUICK_EPOCHS = 1.0


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    compile_only: bool

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def _blocks(doc: Path) -> list[Block]:
    """Fenced code blocks, indented ones (inside list items) included, indentation removed."""
    lines = doc.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = re.match(r"^(\s*)(`{3,})(\S*)\s*$", lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, lang = opening.groups()
        body, end = [], index + 1
        while end < len(lines) and not re.match(rf"^\s*{fence}\s*$", lines[end]):
            body.append(lines[end][len(indent):] if lines[end].startswith(indent) else lines[end].lstrip())
            end += 1
        assert end < len(lines), f"{doc.relative_to(ROOT)}:{index + 1}: unclosed code fence"
        marked = index > 0 and lines[index - 1].strip() == COMPILE_ONLY
        blocks.append(Block(doc, index + 1, lang.lower(), "\n".join(body) + "\n", marked))
        index = end + 1
    return blocks


def _prose(doc: Path) -> str:
    """The document without its fenced blocks."""
    kept, fenced = [], None
    for line in doc.read_text().splitlines():
        fence = re.match(r"^\s*(`{3,})", line)
        if fence and (fenced is None or fence.group(1) == fenced):
            fenced = None if fenced else fence.group(1)
            continue
        if fenced is None:
            kept.append(line)
    return "\n".join(kept)


def _inline_code(doc: Path) -> list[str]:
    return re.findall(r"`([^`\n]+)`", _prose(doc))


def _blocks_of(langs: set[str]) -> list[Block]:
    return [block for doc in DOCS for block in _blocks(doc) if block.lang in langs]


def _command_lines(block: Block) -> Iterator[list[str]]:
    """Each simple command of a shell block as words: comments dropped, a console's ``$ ``
    prompt removed, ``&&``/``||``/``;``/``|`` split, continuation lines joined."""
    text = re.sub(r"\\\n", " ", block.text)
    for line in text.splitlines():
        line = line.strip()
        if block.lang == "console":
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for word in lexer:
            if word and set(word) <= set(";&|"):
                if words:
                    yield words
                words = []
            else:
                words.append(word)
        if words:
            yield words


def _program(words: list[str]) -> tuple[str, list[str]]:
    """The program a command runs (environment assignments skipped) and its arguments."""
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    return (words[0], words[1:]) if words else ("", [])


# -- the fedsyn command ----------------------------------------------------------------------


@functools.cache
def _click_root() -> click.Group:
    return typer.main.get_command(app)  # type: ignore[return-value]


@functools.cache
def _help(path: tuple[str, ...]) -> str:
    """``fedsyn PATH --help``, wide enough that no option name is cut."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert result.exit_code == 0, f"fedsyn {' '.join(path)} --help failed: {result.output}"
    return result.output


def _options_in(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))


def _command_path(arguments: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """The sub-command path at the start of ``arguments`` (``server sites add``) and the rest."""
    command: click.Command = _click_root()
    path: list[str] = []
    while isinstance(command, click.Group) and arguments and arguments[0] in command.commands:
        command = command.commands[arguments[0]]
        path.append(arguments[0])
        arguments = arguments[1:]
    return tuple(path), arguments


def _used_options(arguments: list[str]) -> list[str]:
    return [word.split("=", 1)[0] for word in arguments if re.match(r"^--?[A-Za-z]", word)]


def _fedsyn_commands() -> list[tuple[str, list[str]]]:
    """(where, arguments) of every ``fedsyn ...`` command: in shell blocks and in inline code."""
    found = []
    for block in _blocks_of(SHELL):
        for words in _command_lines(block):
            program, arguments = _program(words)
            if Path(program).name == "fedsyn":
                found.append((block.name, arguments))
    for doc in DOCS:
        for span in _inline_code(doc):
            if span.startswith("fedsyn "):
                found.append((f"{doc.relative_to(ROOT)}: `{span}`", shlex.split(span)[1:]))
    return found


def test_documents_exist() -> None:
    assert (ROOT / "README.md").stat().st_size < 10_000, "the README is the front door: keep it under 10 KB"
    assert {doc.name for doc in DOCS} >= {"README.md", "researchers.md", "privacy.md", "site.md",
                                         "coordinator.md", "schema.md", "benchmarks.md", "architecture.md"}
    assert len(_fedsyn_commands()) > 30


def test_every_fedsyn_command_and_option_exists() -> None:
    problems = []
    for where, arguments in _fedsyn_commands():
        path, rest = _command_path(arguments)
        if not path and rest and not rest[0].startswith("-"):
            problems.append(f"{where}: fedsyn has no command '{rest[0]}'")
            continue
        known = _options_in(_help(path))
        problems += [f"{where}: fedsyn {' '.join(path)} has no option {option}"
                     for option in _used_options(rest) if option not in known]
    assert not problems, "\n".join(problems)


def _shell_fedsyn_commands() -> list[tuple[str, list[str]]]:
    return [(where, arguments) for where, arguments in _fedsyn_commands() if not where.endswith("`")]


def test_every_fedsyn_command_in_a_shell_block_parses() -> None:
    """A shell block's ``fedsyn ...`` is a whole command line: it parses as the command would parse
    it (every required argument given, each option with its value, values of the right type and
    choice), short of running. Inline code names commands and options in passing, so only the
    names are checked there (above)."""
    problems = []
    for where, arguments in _shell_fedsyn_commands():
        path, rest = _command_path(arguments)
        command: click.Command = _click_root()
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        try:
            command.make_context(" ".join(["fedsyn", *path]), list(rest))
        except click.ClickException as exc:
            problems.append(f"{where}: fedsyn {' '.join(arguments)}: {exc.format_message()}")
    assert not problems, "\n".join(problems)


# The shell blocks' commands that take seconds run for real, in a scratch folder where the docs'
# placeholders name the demo's files. The others parse (above); simulate, fit and evaluate run in
# tests/test_cli.py and tests/test_cli_commands.py, the daemons in tests/test_operator_processes.py.
RUN_ON_THE_DEMO = {("schema", "draft"), ("validate",), ("keys", "generate"), ("certs", "init"),
                   ("certs", "site-key"), ("server", "app-hash")}
PLACEHOLDERS = {"DATA.csv": "flchain.csv", "COLUMN": "death", "S": "schema.json"}


def test_the_quick_shell_commands_run_on_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedsyn.data.demo import demo_data_path, demo_schema_path
    from fedsyn.data.schema import Schema
    from fedsyn.data.tables import read_table, write_table

    shutil.copy(demo_data_path(), tmp_path / "flchain.csv")
    shutil.copy(demo_schema_path(), tmp_path / "schema.json")
    write_table(read_table(demo_data_path(), Schema.load(demo_schema_path())), tmp_path / "cohort.parquet")
    monkeypatch.chdir(tmp_path)
    ran, problems = set(), []
    for where, arguments in _shell_fedsyn_commands():
        path, _ = _command_path(arguments)
        if path not in RUN_ON_THE_DEMO:
            continue
        words = [PLACEHOLDERS.get(word, word) for word in arguments]
        words = [f"{tmp_path}{word}" if word.startswith("/") else word for word in words]  # /etc/fedsyn: scratch
        result = CliRunner().invoke(app, words)
        ran.add(path)
        if result.exit_code != 0:
            problems.append(f"{where}: fedsyn {' '.join(arguments)}: exit {result.exit_code}: {result.output[-500:]}")
    assert not problems, "\n".join(problems)
    assert ran == RUN_ON_THE_DEMO, f"no longer in the docs: {sorted(RUN_ON_THE_DEMO - ran)}"


# -- python -m modules, python scripts, pytest ---------------------------------------------------

_PROGRAM_HELP = """
import contextlib, io, json, runpy, sys
results = {}
for target in sys.argv[1:]:
    sys.argv = [target, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if target.endswith(".py"):
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    except BaseException as exc:
        out.write(f"{type(exc).__name__}: {exc}")
        code = 1
    results[target] = {"code": code, "help": out.getvalue()}
print(json.dumps(results))
"""


def _python_commands() -> list[tuple[str, str, list[str]]]:
    """(where, target, arguments) of every ``python -m MODULE ...`` (target: the module) and every
    ``python PATH.py ...`` (target: the script's path) in shell blocks and inline code."""
    commands = [(block.name, words) for block in _blocks_of(SHELL) for words in _command_lines(block)]
    for doc in DOCS:
        commands += [(f"{doc.relative_to(ROOT)}: `{span}`", shlex.split(span)) for span in _inline_code(doc)
                     if re.match(r"^\S*python3?(\.\d+)? ", span)]
    found = []
    for where, words in commands:
        program, arguments = _program(words)
        if not re.match(r"^python3?(\.\d+)?$", Path(program).name) or not arguments:
            continue
        if arguments[0] == "-m" and len(arguments) >= 2:
            found.append((where, arguments[1], arguments[2:]))
        elif arguments[0].endswith(".py"):
            found.append((where, arguments[0], arguments[1:]))
    return found


def _own_programs() -> list[str]:
    """The documented fedsyn modules and repository scripts (not pip's, venv's or pytest's)."""
    return sorted({target for _, target, _ in _python_commands()
                   if target.startswith("fedsyn.") or target.endswith(".py")})


def _program_source(target: str) -> str:
    if target.endswith(".py"):
        return (ROOT / target).read_text()
    return Path(importlib.util.find_spec(target).origin).read_text()  # type: ignore[union-attr]


def test_every_documented_program_answers_help_and_takes_its_documented_options() -> None:
    """``python -m fedsyn....`` and ``python benchmarks/NAME.py`` as the docs write them: each runs
    its ``--help`` from the checkout's root, and every option the docs pass it is in that help."""
    targets = _own_programs()
    assert any(target.startswith("benchmarks/") for target in targets), "no python benchmarks/... command found"
    missing = [target for target in targets if target.endswith(".py") and not (ROOT / target).is_file()]
    assert not missing, f"documented scripts that do not exist: {missing}"
    done = subprocess.run([sys.executable, "-c", _PROGRAM_HELP, *targets], capture_output=True, text=True,
                          timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    problems = [f"python {target} --help: exit {result['code']}: {result['help'][-500:]}"
                for target, result in results.items() if result["code"] != 0]
    for where, target, arguments in _python_commands():
        if target in results:
            known = _options_in(results[target]["help"])
            problems += [f"{where}: {target} has no option {option}"
                         for option in _used_options(arguments) if option not in known]
    assert not problems, "\n".join(problems)


def test_pytest_markers_and_test_files_exist() -> None:
    declared = {marker.split(":")[0] for marker in
                tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]}
    problems = []
    for where, module, arguments in _python_commands():
        if module != "pytest":
            continue
        for index, word in enumerate(arguments):
            if word == "-m" and index + 1 < len(arguments):
                problems += [f"{where}: no pytest marker '{name}'"
                             for name in re.findall(r"\w+", arguments[index + 1])
                             if name not in declared | {"not", "and", "or"}]
            elif word.startswith("tests/") and not (ROOT / word.split("::")[0]).is_file():
                problems.append(f"{where}: no file {word}")
    for doc in DOCS:  # test files named in prose
        problems += [f"{doc.relative_to(ROOT)}: no file {name}"
                     for name in set(re.findall(r"tests/[\w/]+\.py", _prose(doc))) if not (ROOT / name).is_file()]
    assert not problems, "\n".join(problems)


def test_scripts_and_repository_paths_exist() -> None:
    """Programs run by path (``deploy/examples/make-demo.sh``), pip's ``-c`` constraints and the
    repository files the prose names in code (``deploy/compose.yaml``) exist."""
    problems = []
    for block in _blocks_of(SHELL):
        for words in _command_lines(block):
            program, arguments = _program(words)
            if "/" in program and not program.startswith(("/", ".venv/", "JUDGE_VENV/")):
                if not (ROOT / program).is_file():
                    problems.append(f"{block.name}: no script {program}")
            if Path(program).name == "pip":
                problems += [f"{block.name}: no constraints file {arguments[i + 1]}"
                             for i, word in enumerate(arguments[:-1])
                             if word == "-c" and not (ROOT / arguments[i + 1]).is_file()]
    tops = ("common/", "server/", "client/", "deploy/", "cli/", "simulations/", "benchmarks/", "tests/", ".ci/")
    for doc in DOCS:
        for span in _inline_code(doc):
            if span.startswith(tops) and " " not in span and not (ROOT / span.rstrip("/")).exists():
                problems.append(f"{doc.relative_to(ROOT)}: `{span}` does not exist")
    assert not problems, "\n".join(problems)


def test_every_option_named_in_prose_exists_somewhere() -> None:
    """An option quoted alone in prose (`--fail-below 0.6`) is an option of some fedsyn command or
    benchmark script, or one of the Flower flags the docs discuss."""
    known = set(FOREIGN_OPTIONS)
    stack: list[tuple[tuple[str, ...], click.Command]] = [((), _click_root())]
    while stack:
        path, command = stack.pop()
        known |= _options_in(_help(path))
        if isinstance(command, click.Group):
            stack += [((*path, name), sub) for name, sub in command.commands.items()]
    for target in _own_programs():  # argparse declares its options in the source
        known |= set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", _program_source(target)))
    problems = []
    for doc in DOCS:
        for span in _inline_code(doc):
            option = re.match(r"^(--[A-Za-z][\w-]*)", span)
            if option and option.group(1) not in known:
                problems.append(f"{doc.relative_to(ROOT)}: `{span}` is no fedsyn option")
    assert not problems, "\n".join(problems)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line.startswith("python3 -m venv")]
    readme = [block.text.strip() for block in _blocks(ROOT / "README.md") if block.lang == "bash"]
    assert ci and ci[-1] in readme


# -- python and json blocks --------------------------------------------------------------------


def _python_blocks() -> list[Block]:
    return _blocks_of({"python", "py"})


def test_python_examples_compile_and_their_imports_resolve() -> None:
    blocks = _python_blocks()
    assert blocks
    problems = []
    for block in blocks:
        tree = ast.parse(compile(block.text, block.name, "exec", flags=ast.PyCF_ONLY_AST))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                problems += [f"{block.name}: {node.module} has no {alias.name}"
                             for alias in node.names if not hasattr(module, alias.name)]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
    assert not problems, "\n".join(problems)


@pytest.fixture
def demo_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """A folder with the demo schema as ``schema.json`` and its rows as ``extract.csv``, fits cut short,
    and ``frame``: the demo rows."""
    from fedsyn.data.demo import demo_data_path, demo_schema_path
    from fedsyn.data.schema import Schema
    from fedsyn.data.tables import read_table

    shutil.copy(demo_schema_path(), tmp_path / "schema.json")
    shutil.copy(demo_data_path(), tmp_path / "extract.csv")
    monkeypatch.chdir(tmp_path)
    cut_fits_short(monkeypatch, QUICK_EPOCHS)
    return {"frame": read_table(demo_data_path(), Schema.load(demo_schema_path()))}


@pytest.mark.parametrize("block", [b for b in _python_blocks() if not b.compile_only], ids=lambda b: b.name)
def test_python_example_runs_on_the_demo(block: Block, demo_workdir: dict[str, object]) -> None:
    namespace = {"__name__": "__docs__", **demo_workdir}
    exec(compile(block.text, block.name, "exec"), namespace)


def test_json_examples_parse() -> None:
    from fedsyn.data.rules import Rule

    for block in _blocks_of({"json"}):
        value = json.loads(block.text)
        if isinstance(value, dict) and "require" in value:
            Rule.model_validate(value)


# -- the facts that have one home --------------------------------------------------------------


def _section(doc: Path, heading: str) -> str:
    text = doc.read_text()
    start = text.index(heading)
    following = re.search(r"^#{1,3} ", text[start + len(heading):], flags=re.M)
    return text[start:start + len(heading) + following.start()] if following else text[start:]


def test_release_table_names_the_files_the_release_code_describes() -> None:
    """The README's release table and ``RELEASE_CONTENTS`` (copied into every privacy_report.json)
    name the same files."""
    from fedsyn.server.release import RELEASE_CONTENTS

    table = _section(ROOT / "README.md", "### What a release holds")
    in_readme = {name for row in table.splitlines() if row.startswith("| `")
                 for name in re.findall(r"`([\w.]+\.\w+)`", row.split("|")[1])}
    in_code = {name.strip() for key in RELEASE_CONTENTS for name in re.split(r"[/,]", key)}
    assert in_readme == in_code


# -- links -------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def _anchors(doc: Path) -> frozenset[str]:
    anchors: list[str] = []
    for line in _prose(doc).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = _slug(heading.group(1))
            count = sum(1 for a in anchors if a == slug or re.fullmatch(rf"{re.escape(slug)}-\d+", a))
            anchors.append(f"{slug}-{count}" if count else slug)
    return frozenset(anchors)


def test_links_resolve_inside_the_repository() -> None:
    problems = []
    for doc in DOCS:
        for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", _prose(doc)):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(ROOT)}: ({target})"
            if not file.is_relative_to(ROOT):
                problems.append(f"{where} points outside the repository")
            elif not file.exists():
                problems.append(f"{where}: no such file")
            elif anchor and (file.suffix != ".md" or anchor not in _anchors(file)):
                problems.append(f"{where}: no heading with that anchor")
    assert not problems, "\n".join(problems)


def test_no_path_outside_the_repository() -> None:
    for doc in DOCS:
        assert "../shared" not in doc.read_text(), f"{doc.relative_to(ROOT)} points at a folder outside the repository"


def test_a_report_of_real_rows_is_never_offered_for_sharing() -> None:
    """helper-86: `fedsyn evaluate`'s help and researchers.md said report.json's numbers 'may
    leave', yet it holds exact counts, shares and spreads of the real rows: two reports of
    extracts one patient apart gave that patient's record away. Both are local, and say so."""
    from fedsyn.cli.research import evaluate

    help_text = " ".join((evaluate.__doc__ or "").split())
    assert "Both files are local" in help_text and "report.json holds exact statistics" in help_text
    for text in [help_text, *(" ".join(path.read_text().split()) for path in DOCS)]:
        assert "may leave is" not in text and "What may leave" not in text
