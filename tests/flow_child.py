"""A process starting one saga for tests/test_flow_control.py: ``flow_child.py URL JOURNEY_ID MODE N GO``.

Once its runtime is open it prints ``ready``; when the file GO exists it starts a saga of JOURNEY_ID (MODE ``key``: all children with one start key;
``limit``: each child for its own user, one tenant) and prints its answer as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from checkpoints.errors import JourneyError
from graphs import JourneyRuntime


async def main(url: str, journey_id: str, mode: str, n: int, go: Path) -> None:
    async with JourneyRuntime.open(url) as rt:
        print("ready", flush=True)
        while not go.exists():  # every child starts at the same moment
            await asyncio.sleep(0.005)
        try:
            if mode == "key":
                answer = await rt.saga.execute_saga_journey(journey_id, "ana", {}, start_key="one-order")
            else:
                answer = await rt.saga.execute_saga_journey(journey_id, f"user-{n}", {"tenant": "acme"})
            print(json.dumps({"saga_id": answer["saga_id"]}))
        except JourneyError as exc:
            print(json.dumps({"error": exc.code}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])))
