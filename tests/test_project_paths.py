"""How records, traces and messages name files: relative to the project inside it, else absolute."""

from pathlib import Path

from ray_app.paths import PROJECT_ROOT, project_relative


def test_a_path_inside_the_project_is_named_from_the_project_root_with_slashes():
    assert project_relative(PROJECT_ROOT / "slm_swap" / "05_eval" / "decision.json") == "slm_swap/05_eval/decision.json"
    assert project_relative(PROJECT_ROOT / "slm_swap" / ".." / "README.md") == "README.md"  # resolved first


def test_a_path_outside_the_project_is_absolute_even_when_given_relative(tmp_path, monkeypatch):
    outside = tmp_path / "results" / "metrics.json"
    assert project_relative(outside) == str(outside.resolve())
    monkeypatch.chdir(tmp_path)
    assert project_relative(Path("results") / "metrics.json") == str(outside.resolve())
