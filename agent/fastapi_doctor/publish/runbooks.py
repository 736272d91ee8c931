"""The runbooks of docs/runbooks/, shipped in the package (``fastapi_doctor/runbooks/``): served by the
side server at /runbooks/, linked from the page, and read for a failing test's fixes."""

from __future__ import annotations

from pathlib import Path

from fastapi_doctor.diagnosis.registry import RUNBOOK_PATH

DIRECTORY = Path(__file__).resolve().parent.parent / "runbooks"


def packaged(root_cause: str) -> Path:
    """The packaged copy of a root cause's runbook."""
    return DIRECTORY / f"{root_cause}.md"


def runbook_fixes(root_cause: str, repo_root: Path | None = None, limit: int = 2) -> list[str]:
    """The headline of each fix in the runbook's "Fixes" section, when the runbook is at hand."""
    candidates = []
    if repo_root is not None:
        candidates.append(repo_root / RUNBOOK_PATH.format(root_cause=root_cause))
    candidates.append(packaged(root_cause))
    for path in candidates:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        return fix_headlines(text)[:limit]
    return []


def fix_headlines(markdown: str, width: int = 160) -> list[str]:
    """Paragraphs that open with bold text in the section whose title names fixes, code blocks skipped."""
    headlines: list[str] = []
    in_fixes = in_code = False
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph and paragraph[0].startswith("**"):
            text = " ".join(paragraph).replace("**", "").rstrip(":")
            headlines.append(text if len(text) <= width else text[: width - 1].rstrip() + "…")
        paragraph.clear()

    for line in markdown.splitlines():
        if line.startswith("```"):
            flush()
            in_code = not in_code
            continue
        if in_code:
            continue
        if line.startswith("#"):
            flush()
            in_fixes = line.lstrip("#").strip().lower().startswith("fix")
            continue
        if not in_fixes:
            continue
        if line.strip():
            paragraph.append(line.strip())
        else:
            flush()
    flush()
    return headlines
