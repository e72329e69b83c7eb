"""The documentation says only what exists: README.md and docs/*.md are read as text (nothing is run).

- every relative link names a file that exists, and every ``#anchor`` a heading of its page, by GitHub's
  rules for heading ids;
- every ``python train.py`` / ``python scripts/NAME.py`` command in a shell block names a script that exists,
  and every config-group choice on it (``loss=arcface``, ``loss=arcface,cosface``, ``'logger=[a,b]'``,
  ``hydra/launcher=submitit_slurm``) an option that exists;
- the blocks a script regenerates (``<!-- begin generated: NAME -->`` ... ``<!-- end generated: NAME -->``)
  are well formed.

Each checker is also run on a made-up page that breaks its rule, so a checker that finds nothing cannot pass.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SHELL_LANGUAGES = {"bash", "sh", "console", "shell"}
FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...

# config groups whose choices are files configs/<group>/<choice>.yaml
CONFIG_GROUPS = ("loss", "backbone", "dataset", "experiment", "optimizer", "scheduler", "logger", "distill")
# Hydra's own groups: their options come from Hydra and its installed plugins (the dev extras install
# submitit and optuna), listed by Hydra's config loader
HYDRA_GROUPS = ("hydra/launcher", "hydra/sweeper")
CHOICE = re.compile(r"^\+{0,2}(" + "|".join(re.escape(g) for g in CONFIG_GROUPS + HYDRA_GROUPS) + r")=(.*)$")
SCRIPT = re.compile(r"^(?:scripts/[\w-]+\.py|train\.py)$")
RUNNERS = {"python", "python3", "torchrun"}

GENERATED = re.compile(r"<!--\s*(begin|end) generated:\s*(\S*)\s*-->")
GENERATED_NAMES = {"quickstart", "finetune", "sweep", "x2softmax_margin", "head_pictures", "distill"}


# ---- reading pages -----------------------------------------------------------------------------

def prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of the lines outside fenced code blocks, inline code spans blanked."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match and (fence is None or match.group(1) == fence):
            fence = match.group(1) if fence is None else None
            continue
        if fence is None:
            lines.append((number, CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)))
    return lines


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, text)`` of each fenced block in a shell language."""
    blocks, fence, language, start, body = [], None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, language, start, body = match.group(1), match.group(2).lower(), number + 1, []
        elif fence is not None and match and match.group(1) == fence and not match.group(2):
            if language in SHELL_LANGUAGES:
                blocks.append((start, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
    return blocks


def slug(heading: str) -> str:
    """GitHub's id of a heading: its text (code, '*' emphasis and link markup dropped), lowercased, every
    character but letters, digits, spaces, '-' and '_' dropped, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")  # tags, code and emphasis marks
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The ids of a page's headings; a repeated id gets -1, -2, ... as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in _heading_lines(text):
        base = slug(line)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def _heading_lines(text: str) -> list[tuple[int, str]]:
    raw = text.splitlines()
    return [(n, HEADING.match(raw[n - 1]).group(2)) for n, _ in prose_lines(text) if HEADING.match(raw[n - 1])]


@lru_cache(maxsize=None)
def anchors_of(path: Path) -> frozenset[str]:
    return frozenset(anchors(path.read_text(encoding="utf-8")))


# ---- the checks ------------------------------------------------------------------------------------

def link_problems(page: Path, text: str) -> list[str]:
    """A line per relative link whose file or anchor does not exist."""
    problems = []
    for number, line in prose_lines(text):
        for target in LINK.findall(line):
            if EXTERNAL.match(target):
                continue
            file_part, _, anchor = target.partition("#")
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            if not file_part:
                if anchor not in anchors(text):
                    problems.append(f"{where}: no heading with the id '{anchor}' on this page")
                continue
            linked = (page.parent / file_part).resolve()
            if not linked.exists():
                problems.append(f"{where}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors_of(linked):
                problems.append(f"{where}: no heading with the id '{anchor}' in {linked.relative_to(ROOT)}")
    return problems


def commands(block: str) -> list[list[str]]:
    """The words of each command in a shell block (continuation lines joined, comments and prompts dropped)."""
    joined = re.sub(r"\\\n", " ", block)
    found = []
    for line in joined.splitlines():
        line = re.sub(r"^\s*\$\s+", "", line)  # a console prompt
        line = re.sub(r"(^|\s)#.*$", "", line)  # a comment (a '#' inside a word is not one)
        if line.strip():
            found.append(line.split())
    return found


def runs_facetrain(words: list[str]) -> bool:
    """Whether the command runs train.py or a script of scripts/ (after python, python3 or torchrun)."""
    return any(word in RUNNERS for word in words) and any(SCRIPT.match(word) for word in words)


def choices(value: str) -> list[str]:
    """The options a group's value names: ``a``, ``a,b`` (a sweep), ``[a,b]`` (a list), ``choice(a,b)``."""
    value = value.strip("'\"")
    sweep_function = re.fullmatch(r"choice\((.*)\)", value)
    if sweep_function:
        value = sweep_function.group(1)
    return [part.strip() for part in value.strip("[]").split(",") if part.strip()]


@lru_cache(maxsize=None)
def hydra_options(group: str) -> frozenset[str]:
    """The options Hydra offers for one of its groups here (its own and its installed plugins')."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return frozenset(GlobalHydra.instance().config_loader().get_group_options(group))


def option_exists(group: str, option: str) -> bool:
    if group in HYDRA_GROUPS:
        return option in hydra_options(group)
    return (ROOT / "configs" / group / f"{option}.yaml").is_file()


def command_problems(page: Path, text: str) -> list[str]:
    """A line per facetrain command naming a script or a config option that does not exist."""
    problems = []
    for start, block in shell_blocks(text):
        for words in filter(runs_facetrain, commands(block)):
            where = f"{page.relative_to(ROOT)} (block at line {start}): {' '.join(words)[:80]}"
            problems += [f"{where}: no script {word}" for word in words
                         if SCRIPT.match(word) and not (ROOT / word).is_file()]
            for word in words:
                match = CHOICE.match(word.strip("'\""))
                if not match:
                    continue
                group, value = match.groups()
                if "<" in value or "$" in value:
                    continue  # a placeholder, e.g. experiment=<name>
                problems += [f"{where}: {group}={option} is not an option of {group}"
                             for option in choices(value) if not option_exists(group, option)]
    return problems


def generated_block_problems(page: Path, text: str) -> list[str]:
    """A line per malformed generated-block marker: not alone on its line, an unknown name, a begin
    without its end (or the reverse), nested blocks."""
    problems, open_blocks = [], []
    name = page.relative_to(ROOT)
    for number, line in enumerate(text.splitlines(), 1):
        if "generated:" not in line:
            continue
        match = GENERATED.fullmatch(line.strip())
        if not match or line.strip() != f"<!-- {match.group(1)} generated: {match.group(2)} -->":
            problems.append(f"{name}:{number}: write a marker alone on its line as "
                            "'<!-- begin generated: NAME -->' or '<!-- end generated: NAME -->'")
            continue
        kind, block = match.groups()
        if block not in GENERATED_NAMES:
            problems.append(f"{name}:{number}: unknown generated block '{block}' (known: {sorted(GENERATED_NAMES)})")
        if kind == "begin":
            if open_blocks:
                problems.append(f"{name}:{number}: '{block}' begins inside '{open_blocks[-1]}'")
            open_blocks.append(block)
        elif open_blocks and open_blocks[-1] == block:
            open_blocks.pop()
        else:
            problems.append(f"{name}:{number}: end of '{block}' without its begin")
    problems += [f"{name}: '{block}' begins and never ends" for block in open_blocks]
    return problems


def generated_names(text: str) -> list[str]:
    return [m.group(2) for m in GENERATED.finditer(text) if m.group(1) == "begin"]


# ---- the documentation as it is ----------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_exists(page):
    assert link_problems(page, page.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_names_scripts_and_config_options_that_exist(page):
    assert command_problems(page, page.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_blocks_are_well_formed(page):
    assert generated_block_problems(page, page.read_text(encoding="utf-8")) == []


def test_each_generated_block_appears_once_in_all_the_pages():
    names = [name for page in PAGES for name in generated_names(page.read_text(encoding="utf-8"))]
    assert sorted(names) == sorted(GENERATED_NAMES)


def test_the_docs_pages_are_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, line in prose_lines(readme)
              for target in LINK.findall(line) if target.startswith("docs/")}
    assert sorted(p.name for p in PAGES[1:] if p.resolve() not in linked) == []


# ---- the checkers find what they are for -------------------------------------------------------------

def made_up_page(text: str) -> tuple[Path, str]:
    return ROOT / "docs" / "made_up.md", text


def test_heading_ids_follow_github():
    text = ("# Resume and preemption\n## NaN/Inf steps\n## Console and train.log\n"
            "## The GPU is idle / `data` is high\n## X2-Softmax's margin\n## Notes\n## Notes\n## snake_case_key\n"
            "```bash\n# not a heading\n```\n")
    assert anchors(text) == {"resume-and-preemption", "naninf-steps", "console-and-trainlog",
                             "the-gpu-is-idle--data-is-high", "x2-softmaxs-margin", "notes", "notes-1",
                             "snake_case_key"}


def test_a_broken_link_or_a_missing_anchor_is_found():
    page, text = made_up_page("# Here\n[ok](faq.md) [ok](#here) [ok](../README.md#quick-start) "
                              "[ok](https://example.com/x.md) `[code](nowhere.md)`\n"
                              "[gone](nowhere.md)\n[gone](#there)\n[gone](faq.md#no-such-question)\n"
                              "![gone](missing.png)\n")
    problems = link_problems(page, text)
    assert [p.split(": ", 1)[0] for p in problems] == ["docs/made_up.md:3", "docs/made_up.md:4",
                                                       "docs/made_up.md:5", "docs/made_up.md:6"]


def test_an_unknown_script_or_config_option_is_found():
    page, text = made_up_page(
        "```bash\n"
        "python train.py loss=arcface backbone=r50 'logger=[tensorboard,mlflow]' experiment=<name>  # loss=nope\n"
        "python train.py -m loss=arcface,nope dataset=imagefolder \\\n    optimizer=sgdd\n"
        "python scripts/no_such_script.py --output x\n"
        "torchrun --nproc_per_node=8 train.py 'logger=[tensorboard,nope]' scheduler=poly\n"
        "python train.py -m hydra/launcher=submitit_slurm hydra/sweeper=no_such_sweeper 'loss=choice(arcface,nope)'\n"
        "```\n"
        "```\npython scripts/not_shell.py\n```\n")
    problems = command_problems(page, text)
    assert [p.rsplit(": ", 1)[1] for p in problems] == [
        "loss=nope is not an option of loss", "optimizer=sgdd is not an option of optimizer",
        "no script scripts/no_such_script.py", "logger=nope is not an option of logger",
        "hydra/sweeper=no_such_sweeper is not an option of hydra/sweeper", "loss=nope is not an option of loss"]


def test_malformed_generated_blocks_are_found():
    page, text = made_up_page("<!-- begin generated: sweep -->\nx\n<!-- end generated: sweep -->\n"
                              "<!-- begin generated: quickstart -->\n<!-- begin generated: finetune -->\n"
                              "<!-- end generated: finetune -->\n<!-- begin generated: nope -->\n"
                              "text <!-- end generated: nope -->\n")
    problems = generated_block_problems(page, text)
    assert [p.split(": ", 1)[0] for p in problems] == ["docs/made_up.md:5", "docs/made_up.md:7",
                                                       "docs/made_up.md:7", "docs/made_up.md:8",
                                                       "docs/made_up.md", "docs/made_up.md"]
