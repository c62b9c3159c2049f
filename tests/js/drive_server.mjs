// Drives `journeys serve` with the official JS client (@langchain/langgraph-sdk), as a web app would.
// Usage: node drive_server.mjs <base url>; prints one JSON report on stdout.
import { Client } from "@langchain/langgraph-sdk";

const client = new Client({ apiUrl: process.argv[2] });
const report = {};

const thread = await client.threads.create({ metadata: { from: "js" } });
report.thread_id = thread.thread_id;

// A structured journey: input starts it, it stops at its first human step, command.resume advances it.
const started = await client.runs.wait(thread.thread_id, "structured", {
  input: { journey_type: "content_migration", requirements: { source: "a", target: "b" }, user_id: "ana" },
});
report.started_step = started.current_step;
report.interrupted = Array.isArray(started.__interrupt__) && started.__interrupt__.length > 0;
const resumed = await client.runs.wait(thread.thread_id, "structured", {
  command: { resume: { status: "complete", files_uploaded: 3 } },
});
report.resumed_step = resumed.current_step;
report.completed_steps = resumed.completed_steps;

// The guide, streamed as a chat UI does: values and LLM tokens (messages-tuple).
const chat = await client.threads.create();
const events = {};
const tokens = [];
for await (const chunk of client.runs.stream(chat.thread_id, "guide", {
  input: { progress: { content: true }, messages: [{ role: "user", content: "what next?" }] },
  streamMode: ["values", "messages-tuple"],
})) {
  events[chunk.event] = (events[chunk.event] ?? 0) + 1;
  if (chunk.event === "messages" && Array.isArray(chunk.data)) {
    const [message] = chunk.data;
    if (message && typeof message.content === "string" && message.content) tokens.push(message.content);
  }
}
report.guide_events = events;
report.guide_tokens = tokens;
console.log(JSON.stringify(report));
