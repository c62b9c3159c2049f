"""`journeys templates` and `journeys new`: every ready template is listed in one line, and written as a
spec file and an agents module that runs offline, in a process of its own, to one of its ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from graphs.process.catalog import default_process_catalog
from server.cli import app as cli
from tests.server_support import journeys_serve

TEMPLATES = default_process_catalog().names()
ORCHESTRATION_GUIDE = {
    "go_to_market_planning",
    "proposal_generation",
    "data_quality",
    "reporting_analytics",
    "summarization",
    "knowledge_base_qa",
    "localization",
    "policy_update",
}


def test_templates_lists_every_ready_template_with_one_line_each() -> None:
    listed = CliRunner().invoke(cli, ["templates"])
    assert listed.exit_code == 0, listed.output
    lines = {line.split()[0]: line for line in listed.output.splitlines()[1:] if line.strip()}
    assert sorted(lines) == TEMPLATES and set(lines) >= ORCHESTRATION_GUIDE
    assert all(len(line.split(maxsplit=1)[1]) > 20 for line in lines.values())  # a description, not just a name


@pytest.mark.slow
def test_new_writes_a_project_for_every_template_that_runs_in_its_own_process(tmp_path: Path) -> None:
    for template in TEMPLATES:
        made = CliRunner().invoke(cli, ["new", template, "--dir", str(tmp_path)])
        assert made.exit_code == 0 and f"python {template}_agents.py" in made.output, made.output
    runs = (  # each module as `python X_agents.py` runs it, one after the other in one process
        "import runpy, sys\n"
        "for path in sys.argv[1:]:\n"
        "    sys.argv = [path]\n"
        "    runpy.run_path(path, run_name='__main__')\n"
    )
    scripts = [str(tmp_path / f"{t}_agents.py") for t in TEMPLATES]
    done = subprocess.run(
        [sys.executable, "-c", runs, *scripts], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    finished = [line for line in done.stdout.splitlines() if "example-1:" in line]
    assert len(finished) == len(TEMPLATES) and all(": completed (" in line for line in finished), done.stdout


@pytest.mark.slow
def test_a_named_project_is_the_users_to_edit_and_run(tmp_path: Path) -> None:
    made = CliRunner().invoke(cli, ["new", "localization", "--name", "docs_fr", "--dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    spec = json.loads((tmp_path / "docs_fr.json").read_text())
    assert spec["name"] == "docs_fr" and [e["id"] for e in spec["elements"]][:2] == ["start", "extract_strings"]
    module = tmp_path / "docs_fr_agents.py"
    # The user's edit: the terminology check finds a violation on the first pass only.
    edited = module.read_text().replace(
        "def l10n_check_terminology(request: AgentRequest) -> dict[str, Any]:",
        "PASSES = []\n\n\ndef l10n_check_terminology(request: AgentRequest) -> dict[str, Any]:\n"
        "    PASSES.append(1)\n    if len(PASSES) == 1:\n        return {'ok': False, 'violations': ['cart']}",
    )
    module.write_text(edited)
    db = tmp_path / "docs.db"
    done = subprocess.run(
        [sys.executable, module.name, f"sqlite:///{db}"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("docs_fr example-1: completed (localized)") and db.exists()


def test_new_refuses_an_unknown_template_a_bad_name_and_existing_files(tmp_path: Path) -> None:
    unknown = CliRunner().invoke(cli, ["new", "pr_reveiw", "--dir", str(tmp_path)])
    assert unknown.exit_code == 2 and "no process template named 'pr_reveiw'; available:" in unknown.output
    bad = CliRunner().invoke(cli, ["new", "pr_review", "--name", "My-Review", "--dir", str(tmp_path)])
    assert bad.exit_code == 2 and "must be lower_snake_case" in bad.output
    assert CliRunner().invoke(cli, ["new", "pr_review", "--dir", str(tmp_path)]).exit_code == 0
    again = CliRunner().invoke(cli, ["new", "pr_review", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "not overwriting" in again.output
    assert "Traceback" not in unknown.output + bad.output + again.output


@pytest.mark.slow
def test_a_new_project_is_served_with_its_agents_by_plugin(tmp_path: Path) -> None:
    """The agents module `journeys new` writes had no ``register`` for ``journeys serve --plugin``, and the
    README did not say how to serve it: `--plugin reporting_analytics_agents` stopped the server ("has no
    function 'register'"). As the command's output says now, it serves the process with those agents."""
    made = CliRunner().invoke(cli, ["new", "reporting_analytics", "--dir", str(tmp_path)])
    assert made.exit_code == 0 and "journeys serve --no-auth --plugin reporting_analytics_agents" in made.output
    spec = json.loads((tmp_path / "reporting_analytics.json").read_text())
    url = f"sqlite:///{tmp_path / 'served.db'}"
    options = ("--no-auth", "--plugin", "reporting_analytics_agents")
    with (
        journeys_serve(url, tmp_path / "serve.log", *options, cwd=tmp_path) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        deployed = client.post("/processes", json=spec)
        assert deployed.status_code == 200, deployed.text
        started = client.post("/processes/reporting_analytics/instances", json={"business_key": "r-1"})
        assert started.status_code == 200, started.text
        view = started.json()
        for _ in range(100):
            if view["status"] != "running":
                break
            view = client.get(f"/processes/instances/{view['instance_id']}").json()
    assert view["status"] == "completed", view
