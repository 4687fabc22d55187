"""Projects (``projects/<Project>``): the package a config of a project needs imported.

A project adds backbones, heads and config keys through detectron2's registries and
``hcformer.config.register_config_extension``, when its one package is imported. Every entry
point (``train_net.py``, the tools, the demo) opens a config the same way: the project of a
config file lying under ``projects/<Project>/`` (or the one named by ``--project``) is imported
before the config is built, so that its keys and models exist.
"""
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

__all__ = ["PROJECTS", "project_dir", "project_package", "import_project", "import_project_of"]

PROJECTS = Path(__file__).resolve().parents[2] / "projects"
# directories of a project that are not its package
_NOT_PACKAGES = {"configs", "tests", "tools"}


def project_dir(config_file: str) -> Optional[Path]:
    """``projects/<Project>`` of this repository when ``config_file`` lies in one (at any
    depth), else None. Only this repository's: any other folder may be called "projects"."""
    path = Path(config_file).resolve()
    if PROJECTS not in path.parents:
        return None
    project = PROJECTS / path.relative_to(PROJECTS).parts[0]
    return project if project.is_dir() else None  # not a file lying in projects/ itself


def project_package(directory: str) -> str:
    """The name of a project's one package, e.g. "paca" for ``projects/PaCa``."""
    directory = Path(directory)
    packages = sorted(
        p.name for p in directory.iterdir() if (p / "__init__.py").is_file() and p.name not in _NOT_PACKAGES
    )
    if len(packages) != 1:
        raise ValueError(f"Expected one package in the project {directory}, found {packages or 'none'}")
    return packages[0]


def import_project(directory: str) -> ModuleType:
    """Import a detectron2-style project: its directory goes on sys.path (as its own scripts
    do) and its package is imported, which registers its models and its config keys."""
    directory = str(Path(directory).resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    return importlib.import_module(project_package(directory))


def import_project_of(config_file: str, project: Optional[str] = None) -> Optional[ModuleType]:
    """Import ``project`` (a project directory), or else the project ``config_file`` lies in;
    None for a config of no project."""
    directory = project or project_dir(config_file)
    return None if directory is None else import_project(directory)
