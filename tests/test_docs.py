"""Every command and code block in README.md and docs/*.md runs as written.

What runs:

- ```python blocks, each in a fresh directory in a subprocess; they must exit 0.
- ```bash and ```sh blocks: each line is a command. ``pyrotrain``, ``pyrotrain-list``,
  ``pyrotrain-plot`` and ``pyrotrain-predict`` lines run in-process through their entry points
  (the Hydra one for ``pyrotrain``), in a fresh directory, and must exit 0. Other programs
  (make, pip, horovodrun, ...) are not run, but each must be one that NOT_RUN names.
- ```console blocks: lines that start with ``$ `` are commands; the lines after one are output
  that the command must print (whitespace aside).
- Inline code spans in the prose that are whole ``pyrotrain`` commands; spans with placeholders
  (``model=NAME``, ``DIR``, ``...``) are synopses and are not run.
- ```yaml blocks must parse; one that the line above calls ``conf/....yaml`` must equal that file.

Runs are kept short: a command's ``trainer.steps=N`` becomes N/1000 rounded up (checkpoint names
``step-N.pt`` alike, so a resume finds the file the run before it wrote), a command without
``trainer.steps`` gets ``trainer.steps=3``, and an Optuna search gets 2 trials. ``hydra.run.dir``
and ``hydra.sweep.dir`` go in the test's directory unless the command sets them.

An HTML comment on the line right above a fence changes how the block is tested:

- ``<!-- doc-test: skip (reason) -->``: not run; the reason is required.
- ``<!-- doc-test: exit N -->``: the block's commands exit with N.
- ``<!-- doc-test: sequence -->``: each line runs after the lines above it, in the same directory.
- ``<!-- doc-test: setup -->``: a python block that every other test of the same page runs first
  (it writes a file that the page's commands use).

A block whose first line is a comment naming a file (``# mymodels.py``) is written under that name
before every test of the same page.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import shlex
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

SHORT_STEPS = 3
SHORT_TRIALS = 2
RUN = {"pyrotrain", "pyrotrain-list", "pyrotrain-plot", "pyrotrain-predict"}
# Programs the docs name that this test does not run, and why.
NOT_RUN = {
    "make": "builds the environment or runs the whole suite or the benchmarks",
    "pip": "installs packages",
    "horovodrun": "launches several processes; tests/test_horovod.py runs horovodrun",
    "torchrun": "launches several processes; tests/test_torch_distributed.py runs torchrun",
    "install_horovod.sh": "builds Horovod",
    "pytest": "runs the test suite",
    "python": "runs a repository script (the benchmarks)",
    "source": "changes the user's shell",
    "mlflow": "starts the MLflow UI, a server (the full mlflow package, a separate install)",
    "optuna-dashboard": "starts a server (a separate install)",
}
LANGUAGES = {"python", "bash", "sh", "console", "yaml", "text"}
FENCE = re.compile(r"^(```+)\s*(\S*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
FILE_COMMENT = re.compile(r"^#\s*([\w.-]+\.\w+)\s*$")
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_]+\b|\.\.\.|\[-")
INLINE_COMMAND = re.compile(
    r"^(?:\S*/)?(pyrotrain|pyrotrain-list|pyrotrain-plot|pyrotrain-predict)\s+\S"
)
NAMED_CONF = re.compile(r"`(conf/[\w/]+\.yaml)`:\s*$")
STEPS = re.compile(r"^trainer\.steps=(\d+)$")
CHECKPOINT = re.compile(r"step-(\d{8})\.pt")


def short_steps(n: int) -> int:
    # Order-preserving, so a resume that trains further still has steps left to train.
    return -(-n // 1000)


# -- reading the pages ------------------------------------------------------------------------


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence
    lang: str
    lines: list[tuple[int, str]]  # (line number, text)
    directives: dict[str, str] = field(default_factory=dict)
    before: str = ""  # the last non-blank line above the fence (and its directives)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def text(self) -> str:
        return "".join(t + "\n" for _, t in self.lines)

    @property
    def file_name(self) -> str | None:
        """The file this block shows, when its first line is a comment naming one."""
        first = self.lines[0][1] if self.lines else ""
        m = FILE_COMMENT.match(first)
        return m.group(1) if m else None


@dataclass
class Command:
    page: Path
    line: int
    source: str  # as the page shows it
    env: dict[str, str]
    argv: list[str]  # program first
    exit_code: int = 0
    output: str = ""  # what the page shows it printing
    after: list[Command] = field(default_factory=list)  # lines that run first (sequence)
    skip: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def program(self) -> str:
        return Path(self.argv[0]).name

    @property
    def slow(self) -> bool:
        return bool({"--multirun", "-m"} & set(self.argv)) or bool(self.after)


@functools.cache
def read_page(page: Path) -> tuple[list[Block], list[tuple[int, str]], list[str]]:
    """The page's fenced blocks, its other lines (prose), and its malformed markers and fences."""
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    problems: list[str] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    rel = page.relative_to(REPO)
    pending: dict[str, str] = {}
    pending_line = 0
    i = 0
    while i < len(lines):
        text = lines[i]
        m = FENCE.match(text)
        if m is None:
            d = DIRECTIVE.match(text)
            if d:
                word, _, arg = d.group(1).partition(" ")
                if word not in {"skip", "exit", "sequence", "setup"}:
                    problems.append(f"{rel}:{i + 1}: unknown doc-test marker {word!r}")
                elif word == "skip" and not re.fullmatch(r"\(.+\)", arg.strip()):
                    problems.append(f"{rel}:{i + 1}: doc-test: skip needs a (reason)")
                elif word == "exit" and not arg.strip().isdigit():
                    problems.append(f"{rel}:{i + 1}: doc-test: exit needs a number")
                pending[word] = arg.strip()
                pending_line = i + 1
            else:
                if pending and text.strip():
                    problems.append(
                        f"{rel}:{pending_line}: doc-test marker not right above a fence"
                    )
                    pending = {}
                prose.append((i + 1, text))
            i += 1
            continue
        fence, lang = m.groups()
        start = i + 1
        body: list[tuple[int, str]] = []
        i += 1
        while i < len(lines) and lines[i].rstrip() != fence:
            body.append((i + 1, lines[i]))
            i += 1
        if i == len(lines):
            problems.append(f"{rel}:{start}: fence never closed")
        if lang not in LANGUAGES:
            problems.append(
                f"{rel}:{start}: fence without a known language ({lang or 'none'}); "
                f"tag it as one of {sorted(LANGUAGES)}"
            )
        above = [t for _, t in prose if t.strip()]
        blocks.append(Block(page, start, lang, body, pending, above[-1] if above else ""))
        pending = {}
        i += 1
    return blocks, prose, problems


def split_command(text: str) -> tuple[dict[str, str], list[str]]:
    """Environment assignments and argv of a shell line (comments dropped)."""
    words = shlex.split(text, comments=True)
    env = {}
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def block_commands(block: Block) -> list[Command]:
    exit_code = int(block.directives.get("exit", "0") or 0)
    skip = block.directives.get("skip")
    commands: list[Command] = []
    if block.lang == "console":
        for line, text in block.lines:
            if text.startswith("$ "):
                env, argv = split_command(text[2:])
                if argv:
                    commands.append(
                        Command(block.page, line, text[2:], env, argv, exit_code, skip=skip)
                    )
            elif commands:
                commands[-1].output += text + "\n"
    else:
        joined: list[tuple[int, str]] = []
        continued = False
        for line, text in block.lines:
            if continued:
                joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + text.strip())
            else:
                joined.append((line, text))
            continued = text.rstrip().endswith("\\")
        for line, text in joined:
            env, argv = split_command(text)
            if argv:
                commands.append(Command(block.page, line, text, env, argv, exit_code, skip=skip))
    if "sequence" in block.directives:
        for k, command in enumerate(commands):
            command.after = [c for c in commands[:k] if c.program in RUN]
    return commands


def inline_commands(page: Path, prose: list[tuple[int, str]]) -> list[Command]:
    """Code spans in the prose that are whole pyrotrain commands; a span may wrap a line."""
    commands = []
    text = "".join(t + "\n" for _, t in prose)
    starts = [0]
    for _, t in prose:
        starts.append(starts[-1] + len(t) + 1)
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(m.group(1).split())
        if not INLINE_COMMAND.match(span):
            continue
        k = max(j for j, s in enumerate(starts[:-1]) if s <= m.start())
        line = prose[k][0]
        env, argv = split_command(span)
        skip = "a synopsis with placeholders" if PLACEHOLDER.search(span) else None
        commands.append(Command(page, line, span, env, argv, skip=skip))
    return commands


BLOCKS: list[Block] = []
COMMANDS: list[Command] = []
PROBLEMS: list[str] = []
for _page in PAGES:
    _blocks, _prose, _problems = read_page(_page)
    BLOCKS += _blocks
    PROBLEMS += _problems
    for _block in _blocks:
        if _block.lang in {"bash", "sh", "console"}:
            COMMANDS += block_commands(_block)
    COMMANDS += inline_commands(_page, _prose)

RUN_COMMANDS = [c for c in COMMANDS if c.program in RUN]
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang == "python"]
YAML_BLOCKS = [b for b in BLOCKS if b.lang == "yaml"]


def _params(items, slow=lambda item: False):
    return [
        pytest.param(
            item,
            id=item.where,
            marks=[pytest.mark.slow] if slow(item) else [],
        )
        for item in items
    ]


# -- running ----------------------------------------------------------------------------------


def shorten(command: Command, workdir: Path) -> list[str]:
    """The command's arguments with short runs and Hydra's directories under ``workdir``."""
    args = []
    has_steps = False
    for arg in command.argv[1:]:
        m = STEPS.match(arg)
        if m:
            has_steps = True
            arg = f"trainer.steps={short_steps(int(m.group(1)))}"
        arg = CHECKPOINT.sub(lambda c: f"step-{short_steps(int(c.group(1))):08d}.pt", arg)
        args.append(arg)
    if command.program != "pyrotrain" or {"--help", "-h"} & set(args):
        return args
    if not has_steps:
        args.append(f"trainer.steps={SHORT_STEPS}")
    if any(a.startswith("hparams_search=") for a in args) and not any(
        a.startswith("hydra.sweeper.n_trials=") for a in args
    ):
        args.append(f"hydra.sweeper.n_trials={SHORT_TRIALS}")
    for key, name in (("hydra.run.dir", "outputs"), ("hydra.sweep.dir", "multirun")):
        if not any(a.startswith(key + "=") for a in args):
            args.append(f"{key}={workdir / name}")
    return args


@contextlib.contextmanager
def _process_state(cwd: Path, env: dict[str, str]):
    """Run as a fresh process would: in ``cwd``, with ``env``; undo what the run changed."""
    old_cwd, old_path, old_argv = os.getcwd(), list(sys.path), sys.argv
    old_modules = set(sys.modules)
    root = logging.getLogger()
    old_handlers, old_level = list(root.handlers), root.level
    with mock.patch.dict(os.environ, env):
        os.environ.pop("HYDRA_FULL_ERROR", None)  # as helpers.cli_env
        os.chdir(cwd)
        try:
            yield
        finally:
            os.chdir(old_cwd)
            for handler in set(root.handlers) - set(old_handlers):  # Hydra's, into this run dir
                handler.close()
            root.handlers[:] = old_handlers
            root.setLevel(old_level)
            sys.path[:] = old_path
            sys.argv = old_argv
            for name in set(sys.modules) - old_modules:
                origin = getattr(sys.modules[name], "__file__", None) or ""
                if origin.startswith(str(cwd)):  # the user's module of this run (mymodels)
                    del sys.modules[name]


def run_in_process(command: Command, cwd: Path) -> tuple[int, str]:
    """Exit code and output (stdout, then stderr) of one command, run through its entry point."""
    import pyro

    args = shorten(command, cwd)
    out, err = io.StringIO(), io.StringIO()
    pyro.clear_param_store()
    with (
        _process_state(cwd, command.env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            if command.program == "pyrotrain":
                from pyrotrain.cli import main

                sys.argv = [command.argv[0], *args]
                main()
            elif command.program == "pyrotrain-list":
                from pyrotrain.listing import main

                main(args)
            elif command.program == "pyrotrain-predict":
                from pyrotrain.predict import main as predict_main

                predict_main(args)
            else:
                from pyrotrain.plots import main

                main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        except Exception:  # what the console script would print before exiting 1
            traceback.print_exc()
            code = 1
    return code, out.getvalue() + err.getvalue()


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    if env.get("PYTHONPATH"):  # the blocks run elsewhere: keep relative entries pointing here
        env["PYTHONPATH"] = os.pathsep.join(
            str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p
        )
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_python(code: str, cwd: Path, name: str = "doc_block.py") -> subprocess.CompletedProcess:
    (cwd / name).write_text(code, encoding="utf-8")
    return subprocess.run(
        [sys.executable, name],
        cwd=cwd,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def prepare(page: Path, cwd: Path, but: Block | None = None) -> None:
    """Write the page's files and run its setup blocks in ``cwd``."""
    for block in BLOCKS:
        if block.page == page and block.file_name and block is not but:
            (cwd / block.file_name).write_text(block.text, encoding="utf-8")
    for block in BLOCKS:
        if block.page == page and "setup" in block.directives and block is not but:
            r = run_python(block.text, cwd, "doc_setup.py")
            assert r.returncode == 0, f"setup block {block.where} failed:\n{r.stderr}"


def _normal(text: str) -> str:
    return " ".join(text.split())


# -- tests ------------------------------------------------------------------------------------


def test_markers_and_fences_are_well_formed():
    assert not PROBLEMS, "\n".join(PROBLEMS)


def test_every_shell_line_is_run_or_named_in_not_run():
    unknown = [
        f"{c.where}: {c.source.strip()}"
        for c in COMMANDS
        if c.program not in RUN and c.program not in NOT_RUN
    ]
    assert not unknown, "run these, or add the program to NOT_RUN with a reason:\n" + "\n".join(
        unknown
    )


def _python_slow(block: Block) -> bool:
    return "setup" not in block.directives


@pytest.mark.parametrize("block", _params(PYTHON_BLOCKS, _python_slow))
def test_python_block_runs(block: Block, tmp_path: Path):
    if "skip" in block.directives:
        pytest.skip(block.directives["skip"])
    prepare(block.page, tmp_path, but=block)
    name = block.file_name if block.file_name else "doc_block.py"
    r = run_python(block.text, tmp_path, name)
    assert r.returncode == 0, f"{block.where} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"


@pytest.mark.parametrize("command", _params(RUN_COMMANDS, lambda c: c.slow))
def test_command_runs(command: Command, tmp_path: Path):
    if command.skip:
        pytest.skip(command.skip)
    prepare(command.page, tmp_path)
    for earlier in command.after:
        code, output = run_in_process(earlier, tmp_path)
        assert code == earlier.exit_code, f"{earlier.where} (run first) exited {code}:\n{output}"
    code, output = run_in_process(command, tmp_path)
    assert code == command.exit_code, (
        f"{command.where}: `{command.source.strip()}` exited {code}, "
        f"the page implies {command.exit_code}:\n{output}"
    )
    if command.output:
        assert _normal(command.output) in _normal(output), (
            f"{command.where}: the page shows\n{command.output}\nbut the command printed\n{output}"
        )


@pytest.mark.parametrize("block", _params(YAML_BLOCKS))
def test_yaml_block_parses(block: Block):
    data = yaml.safe_load(block.text)
    assert isinstance(data, dict), block.where
    m = NAMED_CONF.search(block.before)
    if m:
        assert data == yaml.safe_load((REPO / m.group(1)).read_text()), (
            f"{block.where} shows {m.group(1)}, but the file differs"
        )


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    _, prose, _ = read_page(page)
    return {_slug(t.lstrip("#")) for _, t in prose if re.match(r"^#{1,6} ", t)}


def test_links_between_pages_resolve():
    broken = []
    for page in PAGES:
        _, prose, _ = read_page(page)
        for line, text in prose:
            for target in re.findall(r"\]\(([^)\s]+)\)", text):
                if re.match(r"^[a-z]+:", target):
                    continue  # a web address
                path, _, anchor = target.partition("#")
                dest = (page.parent / path).resolve() if path else page
                where = f"{page.relative_to(REPO)}:{line}"
                if not dest.exists():
                    broken.append(f"{where}: {target} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    broken.append(f"{where}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
