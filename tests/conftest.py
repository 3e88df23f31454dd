"""pytest setup: importing tests/helpers.py enables the persistent JAX compilation cache and
registers the toy model before any test module builds a model."""
from tests import helpers  # noqa: F401  pylint: disable=unused-import
