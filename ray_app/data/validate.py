"""`slm-swap data validate`: check split files (or folders of them) before any compute."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ray_app.data.rows import SPLITS, Track, split_problems, track_from_path
from ray_app.text_files import TextFileError, utf8_lines


@dataclass
class ValidationReport:
    rows_per_file: dict[Path, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def split_files(path: Path) -> list[Path]:
    """A file as given; a folder expands to every `<track>/<split>.jsonl` below it."""
    if path.is_dir():
        return sorted(file for file in path.rglob("*.jsonl") if file.stem in SPLITS and track_from_path(file))
    return [path]


def not_utf8_problem(file: Path) -> str | None:
    """`file:line: not UTF-8 text …` for the first undecodable line, else None (also for a missing file)."""
    try:
        for _ in utf8_lines(file):
            pass
    except TextFileError as error:
        return str(error)
    except OSError:
        return None  # split_problems says what is wrong with a missing file
    return None


def validate_paths(paths: list[Path], track: Track | None = None) -> ValidationReport:
    """Every row of every file, plus prompts shared between splits of one track folder."""
    report = ValidationReport()
    prompts_by_folder: dict[Path, dict[str, str]] = {}
    for given in paths:
        files = split_files(given)
        if not files:
            report.problems.append(f"{given}: no <track>/<split>.jsonl files found")
        for file in files:
            file_track = track or track_from_path(file)
            if file_track is None:
                report.problems.append(
                    f"{file}: cannot tell the track; put it under structured/ or toolcall/ or pass --track"
                )
                continue
            if (not_text := not_utf8_problem(file)) is not None:
                report.problems.append(not_text)
                continue
            rows, problems = split_problems(file, file_track)
            report.problems.extend(problems)
            report.rows_per_file[file] = len(rows)
            seen = prompts_by_folder.setdefault(file.parent.resolve(), {})
            for line_number, row in enumerate(rows, start=1):
                other = seen.setdefault(row.prompt, f"{file.name}")
                if other != file.name:
                    report.problems.append(
                        f"{file}:{line_number}: prompt also appears in {other} (splits must be distinct)"
                    )
    return report
