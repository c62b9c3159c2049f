"""`journeys demo` shows every family on one database, and ends telling how to open the dashboard on it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graphs import JourneyRuntime
from server.cli import app as cli

SECTIONS = (
    "1 · Structured journey",
    "2 · Session journey",
    "3 · MVP journey",
    "4 · Saga journey: compensation on failure",
    "5 · Client lifecycle",
    "6 · Process: a user task with an SLA, and a timer",
)


@pytest.mark.slow
def test_the_demo_shows_every_family_and_points_at_the_dashboard(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/demo.db"
    shown = CliRunner().invoke(cli, ["demo", "--database-url", url], env={"COLUMNS": "240"})
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert [section for section in SECTIONS if section in out] == list(SECTIONS)
    # Two turns of the guide, with the tools it called.
    assert "guide (recommend_next_pillar) I suggest the Content Pillar next" in out
    assert "guide (record_progress) Recorded in the Content Pillar" in out
    assert "saga status: compensated  compensated: ['transform_data', 'analyze_content', 'upload_content']" in out
    assert "promote: passed → stage pilot" in out and "rollback user_satisfaction_low → stage sandbox" in out
    assert "reassigned to sales-directors" in out and "outcomes ['sent', 'sent', 'sent', 'sent', 'sent']" in out
    assert "━━ 5/5" in out  # the progress bar of the long part
    assert out.rstrip().endswith(f"journeys serve --no-auth --database-url {url}\n  then open http://127.0.0.1:8123/ui")

    assert asyncio.run(_journeys_by_pattern(url)) == dict.fromkeys(FAMILIES, True)  # each left its journeys


FAMILIES = ("structured", "session", "mvp", "saga", "lifecycle", "process")


async def _journeys_by_pattern(url: str) -> dict[str, bool]:
    async with JourneyRuntime.open(url) as runtime:
        return {p: (await runtime.analytics.summary(pattern=p))["journeys"] > 0 for p in FAMILIES}
