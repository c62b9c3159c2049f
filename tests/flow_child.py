"""A process starting sagas for tests/test_flow_control.py: ``flow_child.py URL KEYED LIMITED N GO``.

Once its runtime is open it prints ``ready``; when the file GO exists it starts a saga of design KEYED
with the start key every child uses, then one of design LIMITED (concurrency-limited on ``$.tenant``)
for a user of its own and the tenant every child uses, and prints both answers as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from checkpoints.errors import JourneyError
from graphs import JourneyRuntime


async def main(url: str, keyed: str, limited: str, n: int, go: Path) -> None:
    async with JourneyRuntime.open(url) as rt:
        print("ready", flush=True)
        while not await asyncio.to_thread(go.exists):  # noqa: ASYNC110  (every child starts at the same moment)
            await asyncio.sleep(0.005)
        answers: dict[str, str] = {}
        answer = await rt.saga.execute_saga_journey(keyed, "ana", {}, start_key="one-order")
        answers["keyed"] = answer["saga_id"]
        try:
            answer = await rt.saga.execute_saga_journey(limited, f"user-{n}", {"tenant": "acme"})
            answers["limited"] = answer["saga_id"]
        except JourneyError as exc:
            answers["limited_error"] = exc.code
        print(json.dumps(answers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])))
