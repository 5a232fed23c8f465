"""The README and docs/ say where things are: their links lead somewhere, the README maps every guide
and every folder, and a reference to a section of bench/RESULTS.md names a section it has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# `bench/RESULTS.md, "Title"` or `[bench/RESULTS.md](...), "Title"`, in prose or in comments.
RESULTS_SECTION = re.compile(r'RESULTS\.md(?:\]\([^)]*\))?`?,\s*(?:#\s*)?"([^"]+)"')
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml"}


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file(guide):
    for target in LINK.findall(guide.read_text()):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        path = target.split("#", 1)[0]
        assert (guide.parent / path).exists(), f"{guide.relative_to(ROOT)}: link to {target}, which does not exist"


def test_the_readme_maps_every_guide_and_every_folder():
    readme = (ROOT / "README.md").read_text()
    for guide in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{guide.name})" in readme, f"README.md does not link docs/{guide.name}"
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))} | {".ci"}
    mapped = set(re.findall(r"^\| `([^`]+)/` \|", readme, re.MULTILINE))
    assert mapped == folders, "README.md's folder map differs from the repository's folders"


def test_references_to_results_sections_name_existing_sections():
    titles = {line.lstrip("#").strip() for line in (ROOT / "bench" / "RESULTS.md").read_text().splitlines()
              if line.startswith("#")}
    files = [p for folder in ("dpe_dagster", "tests", "resources", "assets", "deploy", "docs", "bench")
             for p in (ROOT / folder).rglob("*")
             if p.suffix in TEXT_SUFFIXES and p.is_file() and p != Path(__file__)
             and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    files.append(ROOT / "README.md")
    references = [(path, title) for path in files for title in RESULTS_SECTION.findall(path.read_text(errors="replace"))]
    # The benchmarks table of docs/simulator.md: its last column quotes the sections.
    for row in (ROOT / "docs" / "simulator.md").read_text().splitlines():
        if row.startswith("| `bench/"):
            references += [(ROOT / "docs" / "simulator.md", title) for title in re.findall(r'"([^"]+)"', row.split("|")[3])]
    assert len(references) > 5, "the references to sections of bench/RESULTS.md were not found"
    for path, title in references:
        assert title in titles, f"{path.relative_to(ROOT)} names a section of bench/RESULTS.md it has not: {title!r}"


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_named_exists(guide):
    folders = "|".join(("dpe_dagster", "tests", "deploy", "bench", "resources", "assets", "docs"))
    for path in re.findall(rf"`((?:{folders})/[^`\s<>*]*)`", guide.read_text()):
        path = path.split(":", 1)[0].rstrip("/.,")
        if any(part.startswith(".") for part in path.split("/")):
            continue  # made by what runs (bench/.airflow/), never committed
        assert (ROOT / path).exists(), f"{guide.relative_to(ROOT)} names {path}, which does not exist"
