"""Write tests/durations.json (the order xdist workers take the tests in; see conftest.py) from a junit report.

Usage: `.venv/bin/python -m pytest -n 2 --junitxml=report.xml`, then `python tests/durations.py report.xml`.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

OUT = Path(__file__).resolve().parent / "durations.json"


def node_id(case: ET.Element) -> str:
    """The pytest node id of a junit testcase (classname is the dotted path, plus the class if any)."""
    parts = case.attrib["classname"].split(".")
    for cut in range(len(parts), 0, -1):
        path = Path(*parts[:cut]).with_suffix(".py")
        if (OUT.parent.parent / path).exists():
            return "::".join([path.as_posix(), *parts[cut:], case.attrib["name"]])
    raise ValueError(f"no test file for {case.attrib['classname']}")


def main(report: str) -> None:
    cases = ET.parse(report).getroot().iter("testcase")
    durations = {node_id(case): round(float(case.attrib["time"]), 1) for case in cases}
    OUT.write_text(json.dumps(dict(sorted(durations.items())), indent=0) + "\n")
    print(f"{len(durations)} tests, {sum(durations.values()):.0f} s in all -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
