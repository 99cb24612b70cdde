"""The documentation stays true: every hook documented, the public API listed, samples that run.

Code blocks in ``docs/`` are checked one of two ways. A block preceded by
``<!-- from: <path> -->`` must be a verbatim excerpt of that file (lines compared without
indentation; a line ``...`` skips ahead), so the walkthrough cannot drift from the tested
example. Any other ``python`` block must run on its own; in ``docs/hooks.md`` every hook
implementation it defines must also register cleanly on a real ``PluginHost``. A block
preceded by ``<!-- not run: <why> -->`` needs what tests do not have (a Kafka cluster, a
broker): it is compiled and type-checked with mypy (strict, the project's settings), not run.
"""

from __future__ import annotations

import ast
import inspect
import re
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

import sds_plugins
from sds_plugins import PluginHost, hookspecs

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HOOKS_DOC = DOCS / "hooks.md"
ADAPTER_DOC = DOCS / "writing-an-adapter.md"
EXAMPLE_README = ROOT / "examples" / "sds-plugins-example-ebxml" / "README.md"

HOOK_NAMES = sorted(
    name
    for name, value in vars(hookspecs).items()
    if name.startswith("sds_") and inspect.isfunction(value)
)

_FROM = re.compile(r"^<!--\s*from:\s*(\S+)\s*-->$")
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    source: str
    origin: str | None  # the file this block claims to be an excerpt of

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        marker = _FROM.match(lines[index - 1].strip()) if index else None
        blocks.append(
            Block(
                path=path,
                line=index + 1,
                language=opening.group(1),
                source="\n".join(lines[index + 1 : end]) + "\n",
                origin=marker.group(1) if marker else None,
            )
        )
        index = end + 1
    return blocks


def _code_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _find_in_order(haystack: list[str], chunk: list[str], start: int) -> int:
    """Index just past ``chunk`` found contiguously in ``haystack`` at or after ``start``."""
    for at in range(start, len(haystack) - len(chunk) + 1):
        if haystack[at : at + len(chunk)] == chunk:
            return at + len(chunk)
    return -1


def _run(block: Block) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": f"docs_block_{block.line}"}
    exec(compile(block.source, str(block), "exec"), namespace)
    return namespace


def _hook_plugins(namespace: dict[str, object]) -> list[object]:
    """The plugins a block defines: a module of its hook functions, and one per hook class."""
    module_name = namespace["__name__"]
    functions = types.ModuleType(str(module_name))
    plugins: list[object] = []
    for name, value in namespace.items():
        if getattr(value, "__module__", None) != module_name:
            continue  # imported, not defined here
        if inspect.isfunction(value) and hasattr(value, f"{hookspecs.PROJECT}_impl"):
            setattr(functions, name, value)
        elif inspect.isclass(value) and any(
            hasattr(member, f"{hookspecs.PROJECT}_impl") for member in vars(value).values()
        ):
            # Registration only inspects the hook methods, so __init__ arguments are not needed.
            plugins.append(object.__new__(value))
        elif not inspect.isclass(value) and any(
            hasattr(getattr(type(value), member, None), f"{hookspecs.PROJECT}_impl")
            for member in dir(type(value))
        ):
            plugins.append(value)  # an instance whose hooks are inherited (ConfiguredPlugin)
    if vars(functions).keys() - {"__name__", "__doc__", "__package__", "__loader__", "__spec__"}:
        plugins.append(functions)
    return plugins


# --------------------------------------------------------------------------- hooks


def test_every_hook_has_a_section_in_the_hooks_reference() -> None:
    assert HOOK_NAMES, "no hooks found in sds_plugins.hookspecs"
    headings = [
        line for line in HOOKS_DOC.read_text(encoding="utf-8").splitlines() if line.startswith("#")
    ]
    missing = [
        name
        for name in HOOK_NAMES
        if not any(re.search(rf"\b{name}\b", heading) for heading in headings)
    ]
    assert not missing, f"docs/hooks.md has no section heading for: {', '.join(missing)}"


def test_every_hook_example_registers_and_every_hook_has_one() -> None:
    implemented: set[str] = set()
    for block in code_blocks(HOOKS_DOC):
        if block.language != "python":
            continue
        plugins = _hook_plugins(_run(block))
        assert plugins, f"{block}: defines no hook implementation"
        host = PluginHost(load_entrypoints=False, environ={})
        for plugin in plugins:
            host.register(plugin)  # validates hook names and argument names against the specs
            implemented.update(c.name for c in host.pm.get_hookcallers(plugin) or [])
    assert sorted(implemented) == HOOK_NAMES


def test_every_built_in_plugin_is_named_in_the_hooks_reference() -> None:
    from sds_plugins._defaults import default_plugins

    text = HOOKS_DOC.read_text(encoding="utf-8")
    missing = [name for name, _ in default_plugins() if f"`{name}`" not in text]
    assert not missing, f"docs/hooks.md does not list the built-in plugins {missing}"


# --------------------------------------------------------------------------- code samples


SANDBOX_DOC = DOCS / "sandbox.md"
WORKER_DOC = DOCS / "worker.md"
OPERATIONS_DOC = DOCS / "operations.md"
PATIENTS_DOC = DOCS / "patients.md"
DOCS_WITH_CODE = (
    ADAPTER_DOC,
    HOOKS_DOC,
    EXAMPLE_README,
    SANDBOX_DOC,
    WORKER_DOC,
    OPERATIONS_DOC,
    PATIENTS_DOC,
)
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*\S.*-->$")


def _all_blocks() -> list[Block]:
    seen: set[Path] = set()
    blocks = []
    for path in DOCS_WITH_CODE:
        if path not in seen:
            seen.add(path)
            blocks += code_blocks(path)
    return blocks


def _without_docstring(source: str) -> str:
    """A module's source after its docstring (what a walkthrough shows)."""
    tree = ast.parse(source)
    first = tree.body[0] if tree.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        return "\n".join(source.splitlines()[first.end_lineno :])
    return source


def _walkthroughs() -> list[tuple[Path, str, list[Block]]]:
    """The ``from:`` blocks of each document, grouped by the file they show, in order."""
    groups: dict[tuple[Path, str], list[Block]] = {}
    for block in _all_blocks():
        if block.origin is not None:
            groups.setdefault((block.path, block.origin), []).append(block)
    return [(path, origin, blocks) for (path, origin), blocks in groups.items()]


@pytest.mark.parametrize(
    ("doc", "origin", "blocks"),
    _walkthroughs(),
    ids=lambda value: str(value.relative_to(ROOT)) if isinstance(value, Path) else None,
)
def test_walkthroughs_are_whole_files_and_run(doc: Path, origin: str, blocks: list[Block]) -> None:
    """The blocks that show a file, put together in order, are that file: whole, not excerpts,
    so they cannot drift; and a Python file's blocks run as a module."""
    shown = "".join(block.source for block in blocks)
    text = (ROOT / origin).read_text(encoding="utf-8")
    expected = _without_docstring(text) if origin.endswith(".py") else text
    if origin.endswith(".py"):
        assert _code_lines(shown) == _code_lines(expected), (
            f"{doc.name}: the blocks showing {origin}, in order, differ from the file: copy "
            "it again (every line, in order)"
        )
        namespace = _run(Block(doc, blocks[0].line, "python", shown, None))
        adapters: list[object] = []
        for plugin in _hook_plugins(namespace):
            host = PluginHost(load_entrypoints=False, environ={})
            host.register(plugin)
            host.hook.sds_register_adapters(register=adapters.append)
        assert adapters, f"the blocks showing {origin} register no adapter"
    else:
        # Configuration (pyproject.toml...): each block is a contiguous part of the file.
        for block in blocks:
            assert "".join(block.source.split()) in "".join(expected.split()), (
                f"{block} is not part of {origin}: copy it again from the file"
            )


def _needs_a_running_sandbox(block: Block) -> bool:
    """A block written for a sandbox the reader started on port 9000 (``sds-plugins sandbox``)."""
    return "127.0.0.1:9000" in block.source


def _marker(block: Block) -> str:
    """The line just before the block's opening fence."""
    lines = block.path.read_text(encoding="utf-8").splitlines()
    fence = block.line - 1  # 0-based index of the opening fence
    return lines[fence - 1].strip() if fence > 0 else ""


def _is_pytest_module(block: Block) -> bool:
    return _marker(block) == "<!-- pytest -->"


def _is_not_run(block: Block) -> bool:
    """A block for what tests do not have (``<!-- not run: why -->``): type-checked instead."""
    return _NOT_RUN.match(_marker(block)) is not None


@pytest.mark.parametrize(
    "block",
    [
        block
        for block in _all_blocks()
        if block.origin is None and block.language == "python" and not _is_pytest_module(block)
    ],
    ids=str,
)
def test_code_samples_run(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.path == EXAMPLE_README or _needs_a_running_sandbox(block) or _is_not_run(block):
        compile(block.source, str(block), "exec")  # it needs a server: compiling is enough
    else:
        monkeypatch.chdir(tmp_path)  # samples write files (keys, JWKS) where a reader runs them
        _run(block)


def test_blocks_that_are_not_run_type_check(tmp_path: Path) -> None:
    """What cannot run here (a Kafka consumer, a worker on a broker) still has to be right
    about this project's API: mypy --strict with the project's settings, on each block as a
    module. Libraries the tests do not install (aiokafka) are ignored in pyproject.toml."""
    from mypy import api

    blocks = [b for b in _all_blocks() if b.language == "python" and _is_not_run(b)]
    assert blocks, "no <!-- not run --> blocks found"
    files = []
    for block in blocks:
        path = tmp_path / f"{block.path.stem.replace('-', '_')}_line_{block.line}.py"
        path.write_text(block.source, encoding="utf-8")
        files.append(str(path))
    stdout, stderr, status = api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--no-error-summary",
            *files,
        ]
    )
    for generated, block in zip(files, blocks, strict=True):
        stdout = stdout.replace(generated, str(block))  # errors point at the document
    assert status == 0, stdout + stderr


@pytest.mark.parametrize(
    "block",
    [block for block in _all_blocks() if block.origin is None and _is_pytest_module(block)],
    ids=str,
)
@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_test_modules_in_the_docs_pass(block: Block, mode: str, pytester: pytest.Pytester) -> None:
    """A test module a document shows passes as shown, in pytest-asyncio's strict and auto
    modes, with only the sds_plugins pytest plugin (which installing sds-plugins registers)."""
    pytester.makepyfile(test_from_docs=block.source)
    pytester.makeini(
        f"[pytest]\nasyncio_mode = {mode}\nasyncio_default_fixture_loop_scope = function\n"
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(
        passed=block.source.count("\nasync def test_") + block.source.count("\ndef test_")
    )


# --------------------------------------------------------------------------- public API


def test_the_public_names_are_one_list_of_names_that_exist() -> None:
    """``__all__``, the lazy loader's table and the type checkers' imports (the ``if
    TYPE_CHECKING:`` block of ``sds_plugins/__init__.py``) name the same names in the same
    modules, and every name loads."""
    import ast

    names = list(sds_plugins.__all__)
    assert names == sorted(set(names))
    source = (ROOT / "sds_plugins" / "__init__.py").read_text(encoding="utf-8")
    imported = {
        alias.asname or alias.name: "." * statement.level + (statement.module or "")
        for node in ast.parse(source).body
        if isinstance(node, ast.If)
        for statement in node.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }
    assert imported == sds_plugins._EXPORTS
    assert set(names) == set(imported)
    aliased = re.findall(r"^\s+(\w+) as (\w+),$", source, flags=re.MULTILINE)
    assert all(name == alias for name, alias in aliased), "re-exports are written 'X as X'"
    assert sorted(name for name, _ in aliased) == names
    missing = [name for name in names if getattr(sds_plugins, name, None) is None]
    assert not missing, f"public names that do not load: {missing}"
    assert set(names) <= set(dir(sds_plugins))


def test_the_package_imports_from_a_zip(tmp_path: Path) -> None:
    """A zipapp, a vendored or a frozen install has no source files to read: the package and
    its public names load from a zip like any module."""
    import subprocess
    import sys
    import zipfile

    archive = tmp_path / "vendored.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in (ROOT / "sds_plugins").rglob("*.py"):
            bundle.write(path, path.relative_to(ROOT).as_posix())
    program = (
        "import sds_plugins, sys\n"
        "assert sds_plugins.__file__.startswith(sys.argv[1]), sds_plugins.__file__\n"
        "for name in sds_plugins.__all__: getattr(sds_plugins, name)\n"
        "print(sds_plugins.SdsClient.__module__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, str(archive)],
        env={"PYTHONPATH": str(archive), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,  # not the repository, whose sds_plugins/ would come first
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sds_plugins._client"


def _own_docstring(obj: object) -> str:
    # A class's own docstring: inspect.getdoc would fall back to its base class's.
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return (doc or "").strip()


def test_public_classes_and_functions_have_docstrings() -> None:
    undocumented = [
        name
        for name in sds_plugins.__all__
        if (inspect.isclass(obj := getattr(sds_plugins, name, None)) or inspect.isfunction(obj))
        and not _own_docstring(obj)
    ]
    assert not undocumented, f"public names without a docstring: {', '.join(undocumented)}"


def test_the_authors_toolbox_is_the_same_objects_as_the_package() -> None:
    """``sds_plugins.adapters`` holds what an adapter author needs, nothing of its own."""
    import sds_plugins.adapters as toolbox

    for name in toolbox.__all__:
        assert getattr(toolbox, name) is getattr(sds_plugins, name), name
    # What the example adapter and the walkthrough use is all there.
    example = ROOT / "examples" / "sds-plugins-example-ebxml" / "sds_plugins_example_ebxml.py"
    tree = ast.parse(example.read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module in ("sds_plugins", "sds_plugins.adapters")
        for alias in node.names
    }
    assert imported and imported <= set(toolbox.__all__)
