"""The user's documents say what the code does: the README's two commands are where CI finds
them, the OSC reference in docs/control.md is exactly what the address space generates, every
`paik ...` line in the README and docs/ parses, every link resolves, the package list and data
globs cover the tree, and the README's tour runs as written on the built-in model."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import made_once

from procs import run_paik

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MAIN_HEADING = "# set up and run the main job"
TEST_HEADING = "# set up and pass the tests"


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """[(language, text)] of the fenced blocks of a markdown file, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", path.read_text(), re.S | re.M)]


def shell_lines(text: str) -> list[str]:
    """Command lines of a sh block, continuations joined."""
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def paik_commands(line: str) -> list[list[str]]:
    """The argv (without `paik`) of each `paik` command in a shell line (pipes and && split)."""
    words = shlex.split(line, comments=True)
    out, cur = [], []
    for w in words + ["|"]:
        if w in ("|", "&&", ";"):
            if cur and Path(cur[0]).name == "paik":
                out.append(cur[1:])
            cur = []
        else:
            cur.append(w)
    return out


def test_readme_opens_with_the_two_commands_ci_runs():
    blocks = code_blocks(README)
    assert len(blocks) >= 2
    for (lang, text), heading in zip(blocks[:2], (MAIN_HEADING, TEST_HEADING)):
        lines = text.strip().splitlines()
        assert lang == "sh" and len(lines) == 2, f"the block under {heading!r} must be the comment and one line"
        assert lines[0].startswith(heading)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set up and run the main job" in ci and "set up and pass the tests" in ci
    # the main job is the built-in model, offline: no --model, and it ends with `paik info`
    main = shell_lines(blocks[0][1])[1]
    cmds = paik_commands(main)
    assert [c[0] for c in cmds] == ["generate", "info"] and "--model" not in cmds[0]
    assert "pytest" in shell_lines(blocks[1][1])[1]


def test_readme_is_a_short_users_document():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    # what the first command installs, and how to get the CPU-only PyTorch
    assert "CUDA build" in text and "CPU-only build" in text
    assert "paik-instrument" in text


def test_control_page_is_the_generated_osc_reference():
    from paik.instrument.control.osc import reference

    text = (DOCS / "control.md").read_text()
    m = re.search(r"<!-- begin: python -m paik\.instrument\.control\.osc -->\n(.*?)\n<!-- end: python -m "
                  r"paik\.instrument\.control\.osc -->", text, re.S)
    assert m, "docs/control.md lost the markers around the generated OSC tables"
    assert m.group(1).strip() == reference().strip(), (
        "docs/control.md's OSC tables differ from the address space: paste the output of "
        "`python -m paik.instrument.control.osc` between its markers")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_paik_line_parses(page, capsys):
    from paik.cli import build_parser

    parser = build_parser()
    n = 0
    for lang, text in code_blocks(page):
        if lang != "sh":
            continue
        for line in shell_lines(text):
            for argv in paik_commands(line):
                n += 1
                try:
                    parser.parse_args(argv)
                except SystemExit as e:
                    pytest.fail(f"{page.name}: `paik {shlex.join(argv)}` does not parse: "
                                f"{capsys.readouterr().err.strip()} (exit {e.code})")
    if page in (README, DOCS / "play.md", DOCS / "control.md", DOCS / "generate.md"):
        assert n >= 3, f"{page.name}: expected its examples to be found"


def test_links_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name}: link to {target} (no such file)"
            if anchor and dest.suffix == ".md":
                slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                         for h in re.findall(r"^#+ (.*)$", dest.read_text(), re.M)}
                assert anchor in slugs, f"{page.name}: link to {target} (no such heading)"


def test_package_list_and_data_cover_the_tree():
    """Every folder with an __init__.py under a mapped root is a listed package, and every data
    file under the data packages matches a package-data glob (else a wheel would lack it)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    st = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs, data = set(st["packages"]), st["package-dir"], st["package-data"]
    for name, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            pkg = ".".join([name, *rel.parts])
            assert pkg in listed, f"{init.parent.relative_to(ROOT)} is a package missing from pyproject's packages"
    for pkg, globs in data.items():
        folder = ROOT / dirs[pkg]
        covered = {p for g in globs for p in folder.glob(g) if p.is_file()}
        for f in folder.rglob("*"):
            if not f.is_file() or f.suffix in (".py", ".pyc") or "__pycache__" in f.parts:
                continue
            if any((d / "__init__.py").is_file() and d != folder for d in f.parents if folder in d.parents):
                continue  # inside a subpackage, which lists its own data
            assert f in covered, f"{f.relative_to(ROOT)} is not in pyproject's package-data for {pkg}"


# ---- the README's tour, run as written on the built-in model --------------------------------

def _env(home: Path) -> dict:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "HOME": str(home),
            "HF_HUB_OFFLINE": "1"}


def _runnable(argv: list[str]) -> bool:
    """What runs unattended: files and PNGs, and the headless instrument with an end."""
    if argv[0] in ("info", "render", "grid"):
        return True
    if argv[0] == "generate":
        return "--model" not in argv  # the built-in model; real Wan models need a GPU and weights
    return argv[0] == "play" and "--headless" in argv and "--seconds" in argv


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    """A folder holding out/shapes, made by the README's first command's `paik generate`."""
    def make(d):
        main = shell_lines(code_blocks(README)[0][1])[1]
        gen = next(c for c in paik_commands(main) if c[0] == "generate")
        r = subprocess.run(["paik", *gen, "--quiet"], cwd=d, env=_env(d), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return d

    return made_once(tmp_path_factory, "tour", make)  # its tests write beside out/shapes, never into it


def test_readme_tour_runs_as_written(tour):
    """Each runnable shell line of the tour, verbatim, except that the headless instrument gets
    `--osc-port 0 --no-zeroconf`: tests send nothing beyond loopback and take no fixed port. A line
    that is one plain `paik` command runs as the argv a shell would give it (shlex), in a real
    process forked from one driver (tests/procs.py); a line with a pipe runs in a shell."""
    ran, simple = [], []
    for lang, text in code_blocks(README)[2:]:
        if lang != "sh":
            continue
        for line in shell_lines(text):
            cmds = paik_commands(line)
            if not cmds or not all(_runnable(c) for c in cmds):
                continue
            words = shlex.split(line, comments=True)
            if len(cmds) == 1 and words[0] == "paik" and len(words) == len(cmds[0]) + 1:
                argv = cmds[0] + (["--osc-port", "0", "--no-zeroconf"] if cmds[0][0] == "play" else [])
                simple.append((line, argv))
                continue
            if any(c[0] == "play" for c in cmds):
                line = re.sub(r"(\bpaik play\b[^|]*?)(\s+#.*)?$", r"\1 --osc-port 0 --no-zeroconf", line)
            r = subprocess.run(line, shell=True, cwd=tour, env=_env(tour), capture_output=True, text=True,
                               timeout=600)
            assert r.returncode == 0, f"README: `{line}` failed:\n{r.stderr[-2000:]}"
            assert "Traceback" not in r.stderr and "paik: error" not in r.stderr, f"`{line}`:\n{r.stderr[-2000:]}"
            ran.append(cmds[0][0])
    env = _env(tour)
    for (line, argv), r in zip(simple, run_paik([a for _, a in simple], cwd=tour,
                                                 env={"HOME": env["HOME"], "PATH": env["PATH"]}, timeout=600)):
        assert r.returncode == 0, f"README: `{line}` failed:\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr and "paik: error" not in r.stderr, f"`{line}`:\n{r.stderr[-2000:]}"
        ran.append(argv[0])
    assert {"generate", "render", "grid", "play"} <= set(ran), ran
    assert (tour / "circle.mp4").stat().st_size > 0 and len(list((tour / "figs").glob("*.png"))) == 3
    assert (tour / "out" / "triangle" / "manifest.json").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_compile(page):
    for lang, text in code_blocks(page):
        if lang == "python":
            compile(text, f"{page.name} example", "exec")


def test_readme_python_reads_the_bundle(tour):
    blocks = [t for lang, t in code_blocks(README) if lang == "python" and "open_bundle" in t]
    assert blocks
    r = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tour, env=_env(tour), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "'circle'" in r.stdout and "(5, 16, 16)" in r.stdout


def test_readme_python_captures_a_pipeline(tour):
    try:
        import paik.capture.api  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("paik.capture_attention (the library API) is not in this build yet")
    block = next(t for lang, t in code_blocks(README) if lang == "python" and "capture_attention" in t)
    r = subprocess.run([sys.executable, "-c", block], cwd=tour, env=_env(tour), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(5, 16, 16)" in r.stdout
    assert (tour / "out" / "mine" / "manifest.json").is_file()
