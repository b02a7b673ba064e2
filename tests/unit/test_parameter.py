"""Scenario parameters: ranges, granularity and the words their errors use."""

from __future__ import annotations

import pytest

from kvmharness.scenarios import registry
from kvmharness.scenarios.base import Parameter
from kvmharness.scenarios.common import MiBList, SizeList

ROM = registry.all_scenarios()["rom-toggle"].parameter("rom_size")


def test_a_granularity_is_checked_and_shown():
    assert ROM.valid_range() == "4..1048576 KiB, a multiple of 4"
    assert ROM.parse("8") == 8
    with pytest.raises(ValueError, match=r"'rom_size' must be 4\.\.1048576 KiB, a multiple "
                                         r"of 4, got 5"):
        ROM.parse("5")
    with pytest.raises(ValueError, match="a multiple of 4"):
        ROM.check(6)


def test_the_unit_is_said_once():
    vcpus = Parameter("vcpus", "vCPUs", 8, 1, "", minimum=1, maximum=64)
    with pytest.raises(ValueError) as e:
        vcpus.parse("many")
    assert str(e.value) == "parameter 'vcpus' expects 1..64 vCPUs, got 'many'"


@pytest.mark.parametrize("spec", list(registry.all_scenarios().values()), ids=lambda s: s.name)
def test_no_python_class_name_reaches_the_user(spec):
    for p in spec.parameters:
        words = p.valid_range()
        assert p.type.__name__ not in words or p.type in (int, float, bool), words
        if p.type not in (int, float, bool):
            with pytest.raises(ValueError) as e:
                p.parse("bogus")
            assert p.type.__name__ not in str(e.value)


def test_list_types_say_what_they_expect():
    sizes = Parameter("sizes", "sizes", SizeList("4K"), SizeList("4K"), "", type=SizeList)
    with pytest.raises(ValueError, match=r"expects a comma list of sizes like 4K,1M"):
        sizes.parse("3K")
    mib = Parameter("populated_sizes", "MiB", MiBList("4"), MiBList("4"), "", type=MiBList)
    assert "comma list of MiB" in mib.valid_range()
