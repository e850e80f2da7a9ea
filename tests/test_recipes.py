"""Every recipe in recipes/ parses and validates (names, options, values) without data."""
import re
from pathlib import Path

import pytest

from softlabels.config import build_config, load_yaml
from softlabels.pipeline import parse_pipeline, stage_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_validates(path):
    data = load_yaml(str(path))
    if "stages" in data:
        base, stages = parse_pipeline(data, where=path.name)
        for st in stages:
            if st.ensemble is None:
                stage_config(base, st, seed=0, extra_overrides=[])
    else:
        # the methods of the command in the header (``--methods a,b``), or a default set
        listed = re.findall(r"--methods ([\w+,]+)", path.read_text())
        methods = {m for group in listed for m in group.split(",")} or {"ce", "ls", "ols", "cskd"}
        for method in sorted(methods):
            build_config(str(path), [f"method.name={method}"])


def test_there_are_recipes_for_every_seed_paper():
    names = " ".join(p.name for p in RECIPES)
    for key in ("ols", "cskd", "focusnet", "jgl", "orthogonal"):
        assert key in names


def test_recipes_ship_in_the_package_and_resolve_by_name(tmp_path):
    """The recipes live inside the package (recipes/ is a link to them) and `--config NAME` or
    `pipeline NAME` finds a packaged one after a plain pip install; a path still wins."""
    from softlabels.config import RECIPES_DIR, build_config, resolve_recipe

    assert (RECIPES_DIR / "ols-cifar100.yaml").is_file()
    assert {p.name for p in RECIPES} == {p.name for p in RECIPES_DIR.glob("*.yaml")}
    assert resolve_recipe("ols-cifar100") == str(RECIPES_DIR / "ols-cifar100.yaml")
    assert resolve_recipe("pipeline-digits-glr_cd.yaml") == str(RECIPES_DIR / "pipeline-digits-glr_cd.yaml")
    assert build_config("ols-cifar100").data.name == "cifar100"
    own = tmp_path / "ols-cifar100.yaml"
    own.write_text("method: {name: ls}\n")
    assert resolve_recipe(str(own)) == str(own)
    assert resolve_recipe("no-such-recipe") == "no-such-recipe"
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"recipes/*.yaml"' in pyproject
