"""The README cannot drift: every `make TARGET`, every `python -m lumbar COMMAND` and every linked file it
names exists, so a rename breaks this test rather than a newcomer's first hour."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_targets(makefile: str) -> set[str]:
    """The targets a Makefile defines (rules `name: ...`, not variable assignments)."""
    out = set()
    for line in makefile.splitlines():
        m = re.match(r"^([A-Za-z0-9_.%/-]+(?:\s+[A-Za-z0-9_.%/-]+)*)\s*:(?!=)", line)
        if m and not line.startswith("\t"):
            out.update(m.group(1).split())
    return out


def lumbar_commands() -> set[str]:
    from lumbar.commands.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return set(sub.choices)


def unknown_references(readme: str, targets: set[str], commands: set[str], root: Path) -> list[str]:
    """What the README names that does not exist: make targets, lumbar commands, linked files."""
    bad = []
    for t in sorted(set(re.findall(r"\bmake\s+(?:-\S+\s+)*([a-z][a-z0-9-]*)", readme))):
        if t not in targets:
            bad.append(f"make {t}: no such target in the Makefile")
    for c in sorted(set(re.findall(r"python -m lumbar\s+([a-z][a-z-]*)", readme))):
        if c not in commands:
            bad.append(f"python -m lumbar {c}: no such command")
    for link in sorted(set(re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme))):
        if not link.startswith(("http://", "https://")) and not (root / link).exists():
            bad.append(f"link {link}: no such file")
    return bad


def test_everything_the_readme_names_exists():
    readme = (ROOT / "README.md").read_text()
    targets = make_targets((ROOT / "Makefile").read_text())
    assert {"setup", "test", "train", "local-score", "kernel", "demo", "real-scale"} <= targets
    assert unknown_references(readme, targets, lumbar_commands(), ROOT) == []


def test_a_removed_target_command_or_file_is_named():
    readme = "Run `make demo`, then `make kernel`; `python -m lumbar predict --help`; see [the data](docs/data.md)."
    targets = make_targets((ROOT / "Makefile").read_text())
    assert unknown_references(readme, targets, lumbar_commands(), ROOT) == []
    assert unknown_references(readme, targets - {"kernel"}, lumbar_commands(), ROOT) == [
        "make kernel: no such target in the Makefile"]
    assert unknown_references(readme, targets, lumbar_commands() - {"predict"}, ROOT) == [
        "python -m lumbar predict: no such command"]
    assert unknown_references(readme.replace("docs/data.md", "docs/gone.md"), targets, lumbar_commands(), ROOT) == [
        "link docs/gone.md: no such file"]
