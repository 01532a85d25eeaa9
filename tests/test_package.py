"""The package root: public names import on first use, so `import lastvit` and `lastvit --help` stay light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lastvit


def _imports_torch(code: str) -> bool:
    probe = f"import sys\n{code}\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


def test_import_lastvit_and_help_do_not_import_torch():
    assert not _imports_torch("import lastvit")
    assert not _imports_torch("from lastvit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert _imports_torch("from lastvit import LazyStrike")  # the probe itself can see torch


@pytest.mark.parametrize("name", [n for n in lastvit.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    obj = getattr(lastvit, name)
    assert obj.__name__ == name
    assert name in dir(lastvit)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lastvit.nope  # noqa: B018


def test_subpackages_are_reachable_as_attributes():
    assert lastvit.models.PRESETS["vit_micro_patch8_64"]["embed_dim"] == 96
    assert callable(lastvit.evaluate.discover)
