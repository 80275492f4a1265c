"""Planted cases of the demo shop, one module per journey.

Each module here defines `plant(shop) -> list[PlantedCase]`, called by
`demo_shop._Shop.plant()` after the built-in cases, in module-name order (so planted
customer ids are stable). A planter uses the shop's helpers (`planted_customer`,
`add_order`, `add_cart`, `add_session`, `add_consent`, ...) with times as offsets from
the anchor "A" (e.g. `-2 * HOUR`), so every case is current whatever day the demo runs.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator


def planters() -> Iterator[Callable]:
    """Every journey module's `plant` function, in module-name order."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        yield module.plant
