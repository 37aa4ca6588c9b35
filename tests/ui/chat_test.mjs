// The Vercel AI SDK's own chat (`AbstractChat`, what `@ai-sdk/react`'s `Chat` wraps, with
// `DefaultChatTransport`) against the server: a streamed reply, an approval round trip (the tool's
// output after an approval, its denial after a rejection), resuming a running turn from a second
// chat object, stopping one (its stream ends with `abort`, not a finish), and loading the history.
// Usage: node tests/ui/chat_test.mjs BASE_URL
import assert from "node:assert/strict";
import { AbstractChat, DefaultChatTransport } from "ai";

const base = process.argv[2];
const headers = { "x-tenant-id": "t1", "x-user-id": "u1" };

class State {
  constructor() { this.status = "ready"; this.error = undefined; this.messages = []; }
  pushMessage(m) { this.messages = this.messages.concat(m); }
  popMessage() { this.messages = this.messages.slice(0, -1); }
  replaceMessage(i, m) { this.messages = [...this.messages.slice(0, i), m, ...this.messages.slice(i + 1)]; }
  snapshot(thing) { return structuredClone(thing); }
}
class Chat extends AbstractChat {}
const finished = new Map();
const chat = (id) => {
  const made = new Chat({
    id,
    state: new State(),
    transport: new DefaultChatTransport({ api: `${base}/agent/ui/chat`, headers }),
    onError: (e) => { throw e; },
    onFinish: ({ finishReason }) => finished.set(made, finishReason),
  });
  return made;
};
const text = (m) => m.parts.filter((p) => p.type === "text").map((p) => p.text).join("");

// A streamed reply, on a chat id the SDK made up (a new session).
const c = chat();
await c.sendMessage({ text: "hello there" });
assert.equal(c.status, "ready", String(c.error));
assert.equal(c.messages.length, 2);
assert.equal(c.messages[1].role, "assistant");
assert.match(text(c.messages[1]), /^mock reply to: hello there/);
assert.equal(finished.get(c), "stop");

// An approval: the tool call waits; the SDK's approval response decides it, and the answer follows.
const write = JSON.stringify([{ name: "update_resource", arguments: { resourceType: "appointments", resourceId: "a1", data: { time: "12:00" } } }]);
await c.sendMessage({ text: `move it [tools:${write}]` });
assert.equal(c.status, "ready", String(c.error));
const asking = c.messages[c.messages.length - 1];
const tool = asking.parts.find((p) => p.type === "tool-update_resource");
assert.ok(tool, JSON.stringify(asking.parts));
assert.equal(tool.state, "approval-requested");
await c.addToolApprovalResponse({ id: tool.approval.id, approved: true });
await c.sendMessage();
assert.equal(c.status, "ready", String(c.error));
const answered = c.messages[c.messages.length - 1];
assert.match(text(answered), /mock reply/, JSON.stringify(answered.parts));
const ran = answered.parts.find((p) => p.type === "tool-update_resource");
assert.equal(ran.state, "output-available", JSON.stringify(answered.parts));
assert.ok(ran.output, JSON.stringify(ran));

// A rejection: the tool part shows the denial, and the agent answers without running it.
await c.sendMessage({ text: `move it again [tools:${write}]` });
const again = c.messages[c.messages.length - 1].parts.find((p) => p.type === "tool-update_resource");
assert.equal(again.state, "approval-requested");
assert.equal(finished.get(c), "tool-calls");
await c.addToolApprovalResponse({ id: again.approval.id, approved: false, reason: "not now" });
await c.sendMessage();
assert.equal(c.status, "ready", String(c.error));
const denied = c.messages[c.messages.length - 1].parts.find((p) => p.toolCallId === again.toolCallId);
assert.equal(denied.state, "output-denied", JSON.stringify(c.messages[c.messages.length - 1].parts));

// Resuming: one chat object starts a slow turn, another (a reloaded page) resumes its stream.
const first = chat(c.id);
const running = first.sendMessage({ text: "[slow:1500] take your time" });
await new Promise((r) => setTimeout(r, 500));
const second = chat(c.id);
await second.resumeStream();
assert.equal(second.status, "ready", String(second.error));
const resumed = second.messages[second.messages.length - 1];
assert.equal(resumed.role, "assistant");
assert.match(text(resumed), /mock reply to: \[slow:1500\] take your time/);
await running;

// Stopping: a slow turn is cancelled by the stop route, and its stream ends at once.
const third = chat(c.id);
const began = Date.now();
const slow = third.sendMessage({ text: "[slow:4000] a long one" });
await new Promise((r) => setTimeout(r, 400));
assert.equal((await fetch(`${base}/agent/ui/chat/${c.id}/stop`, { method: "POST", headers })).status, 204);
await slow;
assert.ok(Date.now() - began < 3000, `the stream ended ${Date.now() - began} ms after it began`);
assert.equal(third.status, "ready", String(third.error));
assert.equal(finished.get(third), undefined, "a stopped turn is not reported as finished");

// Another chat of the same user leaves this one open: both go on.
const other = chat();
await other.sendMessage({ text: "a second chat" });
assert.equal(other.status, "ready", String(other.error));
await c.sendMessage({ text: "back to the first" });
assert.equal(c.status, "ready", String(c.error));
assert.match(text(c.messages[c.messages.length - 1]), /^mock reply to: back to the first/);

// The stored history, as UIMessages.
const history = await (await fetch(`${base}/agent/ui/chat/${c.id}/messages`, { headers })).json();
assert.equal(history[0].role, "user");
assert.equal(text(history[0]), "hello there");
assert.ok(history.length >= 11, `${history.length} messages`);
const states = history.flatMap((m) => m.parts.filter((p) => p.type === "tool-update_resource").map((p) => p.state));
assert.ok(states.includes("output-available") && states.includes("output-denied"), JSON.stringify(states));
// What streamed while the agent asked for approval is what was stored.
assert.equal(text(history.find((m) => m.id === asking.id)), text(asking));
const calls = history.flatMap((m) => m.parts.filter((p) => p.toolCallId).map((p) => p.toolCallId));
assert.equal(new Set(calls).size, calls.length, `each tool call once: ${calls}`);
// Nothing runs now: resuming is a 204.
assert.equal((await fetch(`${base}/agent/ui/chat/${c.id}/stream`, { headers })).status, 204);
console.log("ui chat: every step passed");
