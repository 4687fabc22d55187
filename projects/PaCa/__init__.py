"""Not a package to import: it makes pytest load ``projects/PaCa/conftest.py`` as
``PaCa.conftest`` instead of a second top-level ``conftest`` module, which would shadow
``tests/conftest.py`` for ``from conftest import ...`` in the main suite."""
