"""Loads the kvmharness pytest plugin when its pytest11 entry point is not visible — a bare
checkout on PYTHONPATH, as inside a tools/vng-run guest — without registering it twice."""

from __future__ import annotations

import pytest

from kvmharness import pytest_plugin


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(pytest_plugin):
        config.pluginmanager.register(pytest_plugin, "kvmharness")
