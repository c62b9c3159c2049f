"""An assistant's graph as the Agent Server draws it (LangGraph's ``Graph.to_json``), read with langgraph-sdk over
real HTTP: a node's ``data`` is the JSON object LangGraph gives (its ``name``), not a Python repr of it."""

from __future__ import annotations

import pytest
from langgraph_sdk.client import LangGraphClient

pytestmark = pytest.mark.slow


async def test_a_graphs_nodes_carry_langgraphs_json_data(sdk_client: LangGraphClient) -> None:
    for assistant in ("guide", "structured"):
        graph = await sdk_client.assistants.get_graph(assistant, xray=True)
        nodes = {n["id"]: n for n in graph["nodes"]}
        assert nodes["__end__"] == {"id": "__end__"}, nodes["__end__"]  # no type, no data: as LangGraph draws it
        drawn = [n for n in graph["nodes"] if n.get("type") == "runnable"]
        assert drawn, graph["nodes"]
        for node in drawn:
            # An object naming the node; the Agent Server leaves out the class path ("id") LangGraph puts in.
            assert isinstance(node["data"], dict) and "id" not in node["data"], node
            assert node["data"]["name"], node
