"""`dev.py ci` shares the server test modules out among the other interpreters by their recorded durations
(tests/durations.json): the shares must come out about equal, or CI waits on the longer one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dev


def test_modules_not_recorded_yet_are_spread_over_the_shares(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Modules added since durations.json was written all went to one share (at no length, the lightest share
    stayed the lightest): in CI, 3.12 ran 363 tests in 5:26 and 3.13 201 in 2:48."""
    lengths = {"a": 40.0, "b": 30.0, "c": 20.0, "d": 10.0}
    recorded = {f"tests/test_server_{name}.py::test_it": seconds for name, seconds in lengths.items()}
    durations = tmp_path / "durations.json"
    durations.write_text(json.dumps(recorded))
    monkeypatch.setattr(dev, "DURATIONS", durations)
    new = [f"tests/test_server_new_{i}.py" for i in range(6)]
    shares = dev.compat_shares(sorted({test.split("::")[0] for test in recorded} | set(new)), 2)
    assert sorted(path for share in shares for path in share) == sorted({t.split("::")[0] for t in recorded} | set(new))
    assert [len([p for p in share if p in new]) for share in shares] == [3, 3]
