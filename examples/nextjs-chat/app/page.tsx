"use client";
// One chat with agent-server's UI message stream (docs/ui-stream.md): history, streaming,
// approvals and stop, with the AI SDK's own hook.
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport } from "ai";
import { useState } from "react";

const server = process.env.NEXT_PUBLIC_AGENT_SERVER ?? "http://localhost:3000";

export default function Page() {
  const [input, setInput] = useState("");
  const { messages, sendMessage, status, stop, addToolApprovalResponse } = useChat({
    transport: new DefaultChatTransport({
      api: `${server}/agent/ui/chat`,
      headers: { "x-tenant-id": "acme", "x-user-id": "web-user" },
    }),
  });
  return (
    <main>
      {messages.map((m) => (
        <div key={m.id}>
          <b>{m.role}</b>
          {m.parts.map((p, i) =>
            p.type === "text" ? <p key={i}>{p.text}</p>
            : p.type.startsWith("tool-") && "state" in p && p.state === "approval-requested" ? (
              <p key={i}>
                {p.type.slice(5)} waits for approval{" "}
                <button onClick={async () => { await addToolApprovalResponse({ id: p.approval.id, approved: true }); sendMessage(); }}>Approve</button>
                <button onClick={async () => { await addToolApprovalResponse({ id: p.approval.id, approved: false }); sendMessage(); }}>Reject</button>
              </p>
            ) : null,
          )}
        </div>
      ))}
      <form onSubmit={(e) => { e.preventDefault(); sendMessage({ text: input }); setInput(""); }}>
        <input value={input} onChange={(e) => setInput(e.target.value)} />
        {status === "streaming" ? <button type="button" onClick={stop}>Stop</button> : <button>Send</button>}
      </form>
    </main>
  );
}
