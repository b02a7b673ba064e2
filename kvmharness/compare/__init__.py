"""A/B statistics over result files and their tables (plain, Markdown, CSV, cover letter)."""

from kvmharness.compare.build import CompareError, Report, Settings, build_report
from kvmharness.compare.render import FORMATS, format_report

__all__ = ["FORMATS", "CompareError", "Report", "Settings", "build_report", "format_report"]
