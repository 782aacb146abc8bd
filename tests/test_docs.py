"""The documentation stays true to conf/: every config key has one row in docs/configuration.md, every preset
is named there, and the README stays a short page for users with links that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

HYDRA_BLOCKS = ("hydra", "defaults")  # Hydra's own settings and the composition list, not normexp's keys
PRESET_GROUPS = ("experiment",)  # `# @package _global_` presets: documented by name
README_MAX_LINES = 200  # a user's page: set-up, use, results; depth goes to docs/


def dotted_keys(node: dict, prefix: str) -> set[str]:
    """The leaf keys of a YAML mapping as dotted names (an empty mapping, such as `{}`, is a leaf)."""
    keys = set()
    for key, value in node.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            keys |= dotted_keys(value, name)
        else:
            keys.add(name)
    return keys


def group_of(path: Path) -> str:
    """conf/norm/brn.yaml -> 'norm'; conf/config.yaml -> '' (top-level keys have no prefix)."""
    return ".".join(path.relative_to(CONF).parent.parts)


def group_files() -> list[Path]:
    """Every YAML under conf/ that holds normexp's keys (not presets, not Hydra's own config group)."""
    return [
        path for path in sorted(CONF.rglob("*.yaml"))
        if path.relative_to(CONF).parts[0] not in (*PRESET_GROUPS, "hydra")
    ]


def config_keys() -> set[str]:
    keys = set()
    for path in group_files():
        node = yaml.safe_load(path.read_text()) or {}
        node = {k: v for k, v in node.items() if k not in HYDRA_BLOCKS}
        keys |= dotted_keys(node, group_of(path))
    return keys


def documented_rows(text: str) -> list[str]:
    """The names in the first column of the markdown tables, where written as `name`."""
    return re.findall(r"^\|\s*`([^`]+)`\s*\|", text, flags=re.MULTILINE)


def test_the_key_finder_reads_groups_and_nesting():
    keys = config_keys()
    assert {"batch_size", "norm.schedule.unit", "optim.auto_lr.with_norm", "train.max_epochs_by_batch_size",
            "data.root"} <= keys
    assert not any(k.startswith(("hydra", "defaults")) for k in keys)


def test_every_config_key_has_exactly_one_row_in_the_reference():
    rows = documented_rows(CONFIG_DOC.read_text())
    keys = config_keys()
    missing = sorted(k for k in keys if k not in rows)
    repeated = sorted(k for k in keys if rows.count(k) > 1)
    assert not missing, f"keys of conf/ without a row in {CONFIG_DOC.name}: {', '.join(missing)}"
    assert not repeated, f"keys with more than one row in {CONFIG_DOC.name}: {', '.join(repeated)}"


def test_the_reference_documents_no_key_that_conf_lacks():
    groups = {group_of(path) for path in group_files()} - {""}
    keys = config_keys()
    rows = documented_rows(CONFIG_DOC.read_text())
    stale = sorted(r for r in rows if r.split(".")[0] in groups and r not in keys)
    assert not stale, f"rows in {CONFIG_DOC.name} for keys that no file in conf/ has: {', '.join(stale)}"


def test_every_preset_is_named_in_the_reference():
    text = CONFIG_DOC.read_text()
    presets = [path for group in PRESET_GROUPS for path in sorted((CONF / group).glob("*.yaml"))]
    assert presets
    missing = [f"{p.parent.name}={p.stem}" for p in presets if f"`{p.parent.name}={p.stem}`" not in text]
    assert not missing, f"presets not named in {CONFIG_DOC.name}: {', '.join(missing)}"


def test_readme_is_short_and_uses_no_team_paths():
    text = README.read_text()
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, more than {README_MAX_LINES}"
    assert "../shared" not in text, "README.md refers to ../shared, a folder only this team's machines have"
    long = [i for i, line in enumerate(text.splitlines(), 1) if len(line) > 120]
    assert not long, f"README.md lines over 120 characters: {long}"


def test_readme_test_command_is_what_ci_runs():
    assert "```bash\npython -m pytest\n```" in README.read_text()
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_relative_links_in_the_docs_lead_to_files():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            path = target.split("#")[0]
            if path and "://" not in path and not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, "links to missing files: " + ", ".join(broken)
