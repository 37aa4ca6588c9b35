// The baseline a team would otherwise write: Express + AWS SDK v3 (DocumentClient) doing the seed's
// two endpoints the usual way, on the same tables. Used only by the benchmark (agent-bench run).
const express = require("express");
const { randomUUID } = require("node:crypto");
const { DynamoDBClient } = require("@aws-sdk/client-dynamodb");
const { DynamoDBDocumentClient, GetCommand, PutCommand, QueryCommand, UpdateCommand } = require("@aws-sdk/lib-dynamodb");

const SESSIONS = process.env.DYNAMODB_SESSIONS_TABLE || "ai-agent-sessions";
const MESSAGES = process.env.DYNAMODB_MESSAGES_TABLE || "ai-agent-messages";
const MODEL_URL = process.env.MODEL_URL;
const db = DynamoDBDocumentClient.from(
  new DynamoDBClient({
    region: "us-east-1",
    endpoint: process.env.DYNAMODB_ENDPOINT,
    credentials: { accessKeyId: "bench", secretAccessKey: "bench" },
  }),
);

const app = express();
app.use(express.json({ limit: "1mb" }));

app.post("/agent/process", async (req, res) => {
  try {
    const tenantId = req.header("x-tenant-id");
    const userId = req.header("x-user-id");
    const { message, sessionId } = req.body;
    let session;
    if (sessionId) {
      session = (await db.send(new GetCommand({ TableName: SESSIONS, Key: { id: sessionId, tenantId } }))).Item;
      if (!session) return res.status(404).json({ error: "session not found" });
    } else {
      const now = new Date().toISOString();
      session = { id: randomUUID(), tenantId, userId, isActive: true, createdAt: now, updatedAt: now };
      await db.send(new PutCommand({ TableName: SESSIONS, Item: session }));
    }
    const history = await db.send(
      new QueryCommand({
        TableName: MESSAGES,
        IndexName: "SessionTimestampIndex",
        KeyConditionExpression: "sessionId = :s",
        ExpressionAttributeValues: { ":s": session.id },
        ScanIndexForward: false,
        Limit: 50,
      }),
    );
    const messages = (history.Items || []).reverse().map((m) => ({ role: m.role === "agent" ? "assistant" : "user", content: m.content }));
    messages.push({ role: "user", content: message });
    const completion = await fetch(MODEL_URL, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "bench", messages }),
    }).then((r) => r.json());
    const reply = completion.choices[0].message.content;
    const userMessage = { id: randomUUID(), tenantId, sessionId: session.id, userId, content: message, role: "user", timestamp: new Date().toISOString() };
    const agentMessage = { id: randomUUID(), tenantId, sessionId: session.id, userId, content: reply, role: "agent", timestamp: new Date().toISOString() };
    await db.send(new PutCommand({ TableName: MESSAGES, Item: userMessage }));
    await db.send(new PutCommand({ TableName: MESSAGES, Item: agentMessage }));
    await db.send(
      new UpdateCommand({
        TableName: SESSIONS,
        Key: { id: session.id, tenantId },
        UpdateExpression: "SET updatedAt = :u",
        ExpressionAttributeValues: { ":u": agentMessage.timestamp },
      }),
    );
    res.json({ sessionId: session.id, response: reply, userMessage, agentMessage });
  } catch (e) {
    res.status(500).json({ error: String(e) });
  }
});

app.get("/agent/conversations/:tenantId/users/:userId", async (req, res) => {
  const { tenantId, userId } = req.params;
  const sessions = await db.send(
    new QueryCommand({
      TableName: SESSIONS,
      IndexName: "TenantUserIndex",
      KeyConditionExpression: "tenantId = :t AND userId = :u",
      ExpressionAttributeValues: { ":t": tenantId, ":u": userId },
    }),
  );
  res.json(sessions.Items || []);
});

app.listen(Number(process.env.PORT || 3001), "127.0.0.1");
