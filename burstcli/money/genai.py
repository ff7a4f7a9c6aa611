"""genai-prices' price data and types, without the rest of its package `__init__`.

pricing.py needs `genai_prices.data_snapshot` and `genai_prices.types` only. Importing either
runs the package's `__init__` first, and that imports its price-update client (httpx2, ~25
modules) and looks its own version up in the installed distributions' metadata: ~0.1 G
instructions of every `burstq run` start-up (issue 19) for code a run never calls. So the
package module is created from its spec without running `__init__`; the first use of
anything `__init__` defines (`calc_price`, `Usage`, `__version__`...) runs it then, in that
same module, so other code importing genai_prices sees the whole package.
tests/test_startup.py checks both halves.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any


def _light_package() -> None:
    if "genai_prices" in sys.modules:
        return  # already imported (whole), by someone else
    spec = importlib.util.find_spec("genai_prices")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return  # pragma: no cover - not a plain package: import it the ordinary way
    loader = spec.loader
    where = Path(next(iter(spec.submodule_search_locations)))
    module = importlib.util.module_from_spec(spec)
    done = False

    def complete(name: str) -> Any:
        nonlocal done
        # A submodule's name: let the import system load it (it asks for the attribute
        # first, on `from . import types`), without running the package's __init__.
        probe = name.startswith("__") and name not in ("__version__", "__all__")
        if done or probe or (where / f"{name}.py").exists():
            raise AttributeError(f"module 'genai_prices' has no attribute {name!r}")
        done = True
        loader.exec_module(module)
        return getattr(module, name)

    module.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules["genai_prices"] = module


_light_package()

import genai_prices.data_snapshot as data_snapshot  # noqa: E402 - after the light package
import genai_prices.types as types  # noqa: E402

__all__ = ["data_snapshot", "types"]
