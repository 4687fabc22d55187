"""Every project under projects/ has the same layout, which the tools rely on to open its configs:
one package, configs/, tests/ with the conftest that makes the package importable, train_net.py,
README.md, and nothing of its own at its root that pytest or Python would pick up."""
from pathlib import Path

import pytest

from hcformer.engine.projects import PROJECTS, project_package

PROJECT_DIRS = sorted(p for p in PROJECTS.iterdir() if p.is_dir())


def test_the_projects_are_found():
    assert [p.name for p in PROJECT_DIRS] == ["CAST", "Expedit", "PaCa", "SViT"]


@pytest.mark.parametrize("project", PROJECT_DIRS, ids=lambda p: p.name)
def test_project_layout(project: Path):
    package = project_package(project)
    assert (project / package / "__init__.py").is_file()
    for required in ["README.md", "train_net.py", "configs", "tests/conftest.py"]:
        assert (project / required).exists(), f"{project.name} has no {required}"
    train_net = (project / "train_net.py").read_text()
    assert f"import {package}" in train_net or f"from {package}" in train_net  # registers the project
    assert "from hcformer.engine.command_line import run" in train_net  # hcformer's command line
    for stray in ["__init__.py", "conftest.py"]:
        assert not (project / stray).exists(), f"{project.name}/{stray}: a project's root is not a package"
