"""`torchstrap update` re-merges data.py where plain copier leaves a conflict: the researcher's line sits
directly next to a line the template changed. Helpers from test_lifecycle_updates."""

from __future__ import annotations

import shutil

import copier

from torchstrap.generator.template_source import git
from test_lifecycle_updates import (DATA, T_DATA, assert_clean_update, assert_python, commit,  # noqa: F401
                                    committed_and_checked, generate, sub, tag, tpl)

MY_LINE = "        RandomTranslation(padding=translate_padding, seed=translate_seed, fill=(128, 128, 128)),\n"
TEMPLATE_LINE = "        RandomHorizontalFlip(p=flip_p, seed=flip_seed),  # left-right mirror\n"


def test_researcher_line_next_to_a_template_change_in_data_py(tpl, tmp_path, capsys):  # noqa: F811
    exp = generate(tpl, tmp_path)
    sub(exp / DATA, r"^(        RandomTranslation\(padding=translate_padding, seed=translate_seed)\),$",
        r"\1, fill=(128, 128, 128)),")
    commit(exp, "grey fill for my translations")
    sub(tpl / T_DATA, r"^(        RandomHorizontalFlip\(p=flip_p, seed=flip_seed\),)$", r"\1  # left-right mirror",
        count=0)
    tag(tpl, "v2.0.0", "v2: comment the flip")
    mine = (exp / DATA).read_text()
    assert MY_LINE + "        RandomHorizontalFlip(p=flip_p, seed=flip_seed),\n" in mine  # directly adjacent

    plain = tmp_path / "plain"  # the same experiment updated by copier alone
    shutil.copytree(exp, plain)
    copier.run_update(dst_path=plain, defaults=True, overwrite=True, conflict="inline", quiet=True)
    conflicted = (plain / DATA).read_text()
    assert "<<<<<<<" in conflicted and ">>>>>>>" in conflicted, "plain copier must conflict here"
    block = conflicted.split("<<<<<<<", 1)[1].split(">>>>>>>", 1)[0]
    assert "fill=(128, 128, 128)" in block and "# left-right mirror" in block

    assert_clean_update(capsys, exp)
    text = (exp / DATA).read_text()
    assert MY_LINE + TEMPLATE_LINE in text and "<<<<<<<" not in text
    assert git("diff", "--name-only", "--diff-filter=U", cwd=exp).stdout == ""
    assert_python(exp, DATA)
    committed_and_checked(capsys, exp)
