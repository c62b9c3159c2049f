"""Write tests/durations.json (the order xdist workers take the tests in; see conftest.py) from junit reports.

Usage: `.venv/bin/python -m pytest -n 3 --junitxml=report.xml`, then `python tests/durations.py report.xml`.
Several reports (of some test files each, e.g. the slow ones run one at a time) may be given: the files they
ran take their new figures (tests no longer there are dropped), the other files keep theirs, and tests of
files that no longer exist are dropped.

`python tests/durations.py --new report.xml` only adds the tests the file does not know yet (a report of just
those, e.g. `pytest $(cat unknown.txt)`), keeping every figure it has: a report of some tests of a file would
otherwise drop the file's others.
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


def main(reports: list[str], *, new_only: bool = False) -> None:
    fresh = {
        node_id(case): round(float(case.attrib["time"]), 1)
        for report in reports
        for case in ET.parse(report).getroot().iter("testcase")
    }
    kept = json.loads(OUT.read_text()) if OUT.exists() else {}
    if new_only:
        fresh = {test: seconds for test, seconds in fresh.items() if test not in kept}
    ran = set() if new_only else {test.split("::")[0] for test in fresh}
    durations = {
        test: seconds
        for test, seconds in kept.items()
        if test.split("::")[0] not in ran and (OUT.parent.parent / test.split("::")[0]).exists()
    }
    durations.update(fresh)
    OUT.write_text(json.dumps(dict(sorted(durations.items())), indent=0) + "\n")
    print(
        (f"{len(fresh)} tests added" if new_only else f"{len(fresh)} tests of {len(ran)} files refreshed")
        + f"; {len(durations)} tests, "
        f"{sum(durations.values()):.0f} s in all -> {OUT}"
    )


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main([a for a in arguments if a != "--new"], new_only="--new" in arguments)
