"""The template as a versioned product: safe to use without --trust, release tags documented, anchors in place."""

from __future__ import annotations

import re

import yaml

from torchstrap.generator.template_source import CHECKOUT, git, parse_version

COPIER = yaml.safe_load((CHECKOUT / "copier.yml").read_text())
TEMPLATE = CHECKOUT / "template"


def test_template_needs_no_trust():
    """No tasks, no Jinja extensions: `copier copy/update` run without --trust (migrations only when needed)."""
    assert "_tasks" not in COPIER and "_jinja_extensions" not in COPIER
    assert COPIER["_subdirectory"] == "template" and COPIER["_answers_file"] == ".copier-answers.yml"
    for migration in COPIER.get("_migrations", []):
        assert parse_version(str(migration["version"])) is not None, f"migration version {migration['version']!r}"


def test_changelog_documents_every_release_tag():
    changelog = (CHECKOUT / "CHANGELOG.md").read_text()
    headings = set(re.findall(r"^## (v\S+)", changelog, flags=re.M))
    assert headings, "CHANGELOG.md should have a `## vX.Y.Z` heading per template version"
    tags = [t for t in git("tag", "--list", cwd=CHECKOUT).stdout.split() if parse_version(t) is not None]
    missing = [t for t in tags if t not in headings]
    assert not missing, f"release tags without a CHANGELOG.md entry: {missing}"
    assert all(parse_version(h) is not None for h in headings), f"non-PEP 440 headings: {sorted(headings)}"


def test_generated_files_keep_their_anchor_lines():
    """The anchors `torchstrap update` merges around (researcher additions go below them)."""
    package = TEMPLATE / "src" / "{{package_name}}"
    for path in package.glob("*trainer.py*.jinja"):  # one per task
        trainer = path.read_text()
        hook_part = trainer.split("    # " + "-" * 66 + " helpers")[0]  # helpers (ssl-multiview) need no anchor
        hooks = re.findall(r"^    def (\w+)\(self", hook_part, flags=re.M)
        anchors = re.findall(r"^    # --- end of (\w+) ---$", trainer, flags=re.M)
        assert hooks and hooks == anchors, "every hook needs its `# --- end of <name> ---` anchor line"
        for hook in ("initialize_model", "train_step", "after_eval_epoch"):
            assert hook in hooks
        bodies = re.findall(r'^        """[^\n]*"""\n(\n?)', trainer, flags=re.M)
        assert set(bodies) == {"\n"}, "a blank line between a hook's docstring and its body"
        assert trainer.rstrip().endswith("# --- add your own methods below this line ---")
    assert (package / "config.py.jinja").read_text().rstrip().endswith("# --- add your own sections below this line ---")
    assert (TEMPLATE / "configs" / "default.yaml.jinja").read_text().rstrip().endswith(
        "# --- add your own sections below this line ---")
    assert (package / "data.py.jinja").read_text().rstrip().endswith(
        "# --- add your own pipelines and loaders below this line ---")
