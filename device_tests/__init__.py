"""The on-device test suite (a package only so that its conftest does not clash with tests/conftest.py)."""
