"""Report files rebuilt from run directories: results and comparison tables (CSV, Parquet), the scored
records (Parquet), report.md and a self-contained report.html. Only this package writes them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from edgeeval.errors import EdgeevalError
from edgeeval.files import make_private_dir, write_private_text
from edgeeval.report.exports import write_exports
from edgeeval.report.html import render_html
from edgeeval.report.markdown import render_markdown
from edgeeval.report.study import Study, study_from_run, study_from_runs, without_text

__all__ = ["build_report", "build_comparison", "default_compare_dir", "write_study"]


def build_report(run_dir: Path, seed: int = 0, no_text: bool = False, out_dir: Path | None = None) -> Path:
    """Score a run directory and write its report files (into the run directory unless `out_dir` is
    given); `no_text` leaves every prompt and answer text out. Returns the path of report.md."""
    study = study_from_run(run_dir, seed=seed)
    return write_study(without_text(study) if no_text else study, out_dir or run_dir)


def build_comparison(run_dirs: list[Path], out_dir: Path, seed: int = 0, no_text: bool = False,
                     matches: dict[str, str] | None = None) -> Path:
    """The same models across several runs side by side, written into `out_dir`; returns report.md. `matches`:
    a model of the first run -> its name in the other runs (another entry, as a requantized copy)."""
    for run_dir in run_dirs:
        if not (run_dir / "manifest.json").is_file():
            raise EdgeevalError(f"{run_dir} is not an edgeeval run directory (no manifest.json)")
    study = study_from_runs(run_dirs, seed=seed, matches=matches)
    return write_study(without_text(study) if no_text else study, out_dir)


def default_compare_dir() -> Path:
    return Path(f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def write_study(study: Study, out_dir: Path) -> Path:
    make_private_dir(out_dir)
    write_exports(out_dir, study.results, study.comparison, study.scored)
    write_private_text(out_dir / "report.md", render_markdown(study))
    write_private_text(out_dir / "report.html", render_html(study))
    return out_dir / "report.md"
