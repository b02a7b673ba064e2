"""The scenarios ``kvmharness list`` and ``kvmharness run`` know about."""

from __future__ import annotations

from kvmharness.scenarios.base import ScenarioSpec


def all_scenarios() -> dict[str, ScenarioSpec]:
    """Every registered scenario by name, in registration order.

    Scenario modules are imported here, inside the function, so that importing the CLI
    (e.g. for ``compare`` on a machine without /dev/kvm) never pulls in the kvm layer.
    """
    specs: list[ScenarioSpec] = []
    # --- register scenario modules here ------------------------------------------------
    from kvmharness.scenarios import (
        mmio,
        mmio_flip,
        rom_toggle,
        slot_ops,
        slot_scale,
        teardown,
    )

    specs += [rom_toggle.SPEC, slot_ops.SPEC, mmio.SPEC, mmio_flip.SPEC, teardown.SPEC,
              slot_scale.SPEC]
    # ------------------------------------------------------------------------------------
    return {s.name: s for s in specs}


def find(name: str) -> ScenarioSpec | None:
    """The registered scenario called ``name``, or None: a file from a scenario since
    removed, or a scenario module that fails to import (reading files must not depend on
    every scenario module importing)."""
    try:
        return all_scenarios().get(name)
    except Exception:  # noqa: BLE001 - any import failure means: not known here
        return None
