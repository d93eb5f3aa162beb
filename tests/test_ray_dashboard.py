"""The embedded local Ray's dashboard: on where the machine has room for it, off on small machines."""

import pytest

from ray_app.ray_runtime import DASHBOARD_ENV, DASHBOARD_MIN_CPUS, DashboardSettingError, dashboard_choice


def test_auto_starts_the_dashboard_from_four_cpus_and_not_below():
    assert dashboard_choice(None, DASHBOARD_MIN_CPUS).include
    assert dashboard_choice("auto", 64).include
    small = dashboard_choice(None, 2)
    assert not small.include
    assert "2 CPUs" in small.reason and f"{DASHBOARD_ENV}=on" in small.reason  # says why and how to get it
    assert not dashboard_choice("AUTO", DASHBOARD_MIN_CPUS - 1).include


def test_on_and_off_are_kept_whatever_the_machine():
    assert dashboard_choice("on", 2).include
    assert not dashboard_choice(" off ", 64).include


def test_anything_else_is_refused_naming_the_variable():
    with pytest.raises(DashboardSettingError, match=rf"{DASHBOARD_ENV}='yes': expected auto, on or off"):
        dashboard_choice("yes", 2)
