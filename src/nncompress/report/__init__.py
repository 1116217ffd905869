"""Reports: JSON, Markdown and plots."""

from nncompress.report.writer import report_markdown, write_json

__all__ = ["report_markdown", "write_json"]
