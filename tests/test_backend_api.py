"""Both backends export the whole public API (docs/CONTRACT.md)."""

import importlib

import pytest

from tdxmodel import _backend


@pytest.mark.parametrize("name", _backend.BACKENDS)
def test_backend_exports_public_api(name):
    mod = importlib.import_module(_backend._MODULES[name])
    missing = [n for n in _backend.PUBLIC_API if not hasattr(mod, n)]
    assert not missing, f"backend {name} lacks {missing}"
    assert mod.BACKEND_NAME == name


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backend"):
        _backend.load("gpu")
