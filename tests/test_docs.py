"""The docs stay true: README size, links, the generated CLI reference, the Python example, the layout."""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType

import pytest

from mtpforge.testing.factory import make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 200
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](image)


def _gen_cli_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return LINK.findall(text)


def test_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move details to docs/ (limit {MAX_README_LINES})"


def test_readme_keeps_the_two_setup_commands() -> None:
    # CI and contributors run exactly these; the README is where they are promised.
    text = README.read_text()
    assert "make demo" in text and "make test" in text


@pytest.mark.parametrize("page", [README, ROOT / "bench" / "README.md", *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_something_that_exists(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert broken == []


def test_cli_reference_is_current() -> None:
    gen = _gen_cli_docs()
    have = gen.CLI_MD.read_text() if gen.CLI_MD.exists() else ""
    assert have == gen.render(), "docs/cli.md is out of date: run `python scripts/gen_cli_docs.py` (or `make docs`)"


def test_cli_reference_covers_every_command() -> None:
    gen = _gen_cli_docs()
    app = gen._app()
    text = gen.CLI_MD.read_text()
    missing = [name for name in app.commands if f"## mtpforge {name}\n" not in text]
    assert missing == []


def test_readme_layout_names_every_package() -> None:
    import mtpforge

    package = Path(mtpforge.__file__).parent
    parts = {p.name for p in package.iterdir() if p.is_dir() and not p.name.startswith("__")}
    text = README.read_text()
    tree = text[text.index("## Layout"):text.index("## Limitations")]
    assert sorted(p for p in parts if f"  {p}/" not in tree) == []
    listed = set(re.findall(r"^  (\w+)/", tree, flags=re.M))
    assert sorted(listed - parts) == []


def test_architecture_page_names_every_layer() -> None:
    from .test_architecture import RANKS

    text = (ROOT / "docs" / "architecture.md").read_text()
    assert sorted(p for p in RANKS if f"`{p}/`" not in text and f"`{p}.py`" not in text) == []


def test_source_cites_only_docs_that_exist() -> None:
    cited = set()
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "tests").glob("*.py")]:
        cited |= set(re.findall(r"\b(docs/[\w./-]+\.md)", path.read_text()))
    assert sorted(c for c in cited if not (ROOT / c).exists()) == []


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's `pycon` block, run as a doctest on factory checkpoints named as in the README."""
    text = README.read_text()
    block = re.search(r"```pycon\n(.*?)```", text, flags=re.S)
    assert block, "README.md has no ```pycon example"
    make_checkpoint(tmp_path / "base")
    make_checkpoint(tmp_path / "finetune", mtp=False)
    monkeypatch.chdir(tmp_path)
    test = doctest.DocTestParser().get_doctest(block.group(1), {}, "README.md", str(README), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    runner.run(test, out=out.append)
    assert runner.tries >= 8 and runner.failures == 0, "".join(out)
    assert os.path.isdir(tmp_path / "w4a16")
