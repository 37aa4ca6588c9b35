"""The official `openai` Python package against the server's Responses and Conversations APIs:
conversations (create with items, retrieve, update, items list and create, delete), responses (JSON,
streamed with the SDK's streaming helper, continued with previous_response_id, retrieved, a dropped
stream resumed with starting_after, background with retrieve and cancel, input items, instructions
for one turn, tool calls the server ran, an approval round trip, delete), and errors in OpenAI's
shape.

Usage: python3 tests/openai/responses_test.py BASE_URL"""

import json
import sys
import time
import urllib.error
import urllib.request

import openai

base = sys.argv[1]
client = openai.OpenAI(
    base_url=base + "/v1",
    api_key="not-needed-with-AUTH_MODE=none",
    default_headers={"x-tenant-id": "t1", "x-user-id": "u1"},
)

conv = client.conversations.create(
    metadata={"topic": "demo"},
    items=[{"type": "message", "role": "user", "content": "an earlier question"}],
)
assert conv.id.startswith("conv_"), conv
assert client.conversations.retrieve(conv.id).metadata == {"topic": "demo"}
updated = client.conversations.update(conv.id, metadata={"topic": "changed", "owner": "me"})
assert updated.metadata == {"topic": "changed", "owner": "me"}, updated
assert client.conversations.retrieve(conv.id).metadata == {"topic": "changed", "owner": "me"}
try:
    client.conversations.update(conv.id, metadata={f"k{i}": "v" for i in range(17)})
    raise AssertionError("17 metadata keys were accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.param == "metadata", e

r = client.responses.create(model="any-model", input="hello", conversation=conv.id)
assert r.id.startswith("resp_"), r
assert r.status == "completed", r
assert r.output_text.startswith("mock reply to: hello"), r.output_text
assert r.usage.input_tokens == 11 and r.usage.output_tokens == 7 and r.usage.total_tokens == 18, r.usage

with client.responses.stream(model="any-model", input="stream me", conversation=conv.id) as stream:
    kinds = []
    deltas = []
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
    final = stream.get_final_response()
assert kinds[0] == "response.created", kinds
assert kinds[-1] == "response.completed", kinds
assert "".join(deltas) == final.output_text, (deltas, final.output_text)
assert final.output_text.startswith("mock reply to: stream me"), final.output_text

# A response without a conversation starts its own, and leaves the others open.
alone = client.responses.create(model="any-model", input="on its own")
assert alone.conversation.id != conv.id, alone.conversation
following = client.responses.create(model="any-model", input="and then?", previous_response_id=r.id)
assert following.conversation.id == conv.id, following.conversation

again = client.responses.retrieve(r.id)
assert again.output_text == r.output_text, again

items = client.conversations.items.list(conv.id, order="asc", limit=100)
texts = [part.text for item in items.data for part in item.content]
assert texts[0] == "an earlier question", texts
assert "hello" in texts and "stream me" in texts and "and then?" in texts, texts
assert len(items.data) == 7, texts
added = client.conversations.items.create(
    conv.id, items=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "added later"}]}]
)
assert [i.content[0].text for i in added.data] == ["added later"], added
newest = client.conversations.items.list(conv.id, limit=1)
assert newest.data[0].id == added.data[0].id and newest.has_more, newest
after = client.conversations.items.list(conv.id, order="asc", after=items.data[5].id)
assert [i.id for i in after.data] == [items.data[6].id, added.data[0].id], after

# Instructions reach the agent's system prompt, for that turn only.
told = client.responses.create(model="any-model", input="[echo-system] hi", instructions="Answer in French.", conversation=conv.id)
assert told.output_text.startswith("system said: ") and told.output_text.endswith("Answer in French."), told.output_text
untold = client.responses.create(model="any-model", input="[echo-system] again", conversation=conv.id)
assert "Answer in French." not in untold.output_text, untold.output_text

# `model` names a tenant agent: its system prompt answers (any other name is the default agent).
agent = json.dumps({"systemPrompt": "You are the front desk."}).encode()
req = urllib.request.Request(base + "/agent/tenants/t1/agents/desk", data=agent, method="PUT",
                             headers={"x-tenant-id": "t1", "content-type": "application/json"})
assert urllib.request.urlopen(req).status in (200, 201)
desk = client.responses.create(model="desk", input="[echo-system] who are you?")
assert desk.output_text.startswith("system said: You are the front desk."), desk.output_text
assert "front desk" not in client.responses.create(model="any-model", input="[echo-system] and you?").output_text

# A tool the server runs: an mcp_call output item with its output, in JSON and streamed; in the
# conversation, a function_call and its function_call_output before the reply.
lookup = '[tools:[{"name":"list_resources","arguments":{"resourceType":"appointments"}}]]'
ran = client.responses.create(model="any-model", input="what is booked? " + lookup, conversation=conv.id)
calls = [o for o in ran.output if o.type == "mcp_call"]
assert len(calls) == 1 and calls[0].name == "list_resources" and calls[0].output and not calls[0].error, ran.output
assert ran.output[-1].type == "message" and ran.output_text.startswith("tool results:"), ran.output
with client.responses.stream(model="any-model", input="again? " + lookup, conversation=conv.id) as stream:
    added_items = [e.item.type for e in stream if e.type == "response.output_item.added"]
    streamed = stream.get_final_response()
assert added_items == ["mcp_call", "message"], added_items
assert [o.type for o in streamed.output] == ["mcp_call", "message"], streamed.output
assert streamed.output_text.startswith("tool results:"), streamed.output_text
newest = client.conversations.items.list(conv.id, limit=3)
assert [i.type for i in newest.data] == ["message", "function_call_output", "function_call"], newest.data
assert newest.data[1].call_id == newest.data[2].call_id == streamed.output[0].id, newest.data
assert newest.data[2].name == "list_resources", newest.data

# A dropped stream, resumed from its last sequence number (from any server: the turn's events are stored).
first_events = []
with client.responses.create(model="any-model", input="[slow:300] a long answer please", stream=True) as events:
    for event in events:
        first_events.append(event)
        if event.type == "response.output_text.delta":
            break
resp_id = first_events[0].response.id
rest = list(client.responses.retrieve(resp_id, stream=True, starting_after=first_events[-1].sequence_number))
assert rest[0].sequence_number == first_events[-1].sequence_number + 1, (first_events[-1], rest[0])
assert all(e.response.id == resp_id for e in rest if hasattr(e, "response")), rest
text = "".join(e.delta for e in first_events + rest if e.type == "response.output_text.delta")
done = [e for e in rest if e.type == "response.completed"][0]
assert text == done.response.output_text, (text, done.response.output_text)

# Background: answered at once, retrieved until it completes; another one cancelled.
queued = client.responses.create(model="any-model", input="in the background", background=True)
assert queued.status in ("queued", "in_progress"), queued
for _ in range(100):
    got = client.responses.retrieve(queued.id)
    if got.status == "completed":
        break
    time.sleep(0.05)
assert got.status == "completed" and got.output_text.startswith("mock reply to: in the background"), got
slow = client.responses.create(model="any-model", input="[slow:3000] never mind", background=True)
time.sleep(0.3)
cancelled = client.responses.cancel(slow.id)
assert cancelled.status == "cancelled", cancelled
inputs = client.responses.input_items.list(slow.id)
assert inputs.data[0].content[0].text == "[slow:3000] never mind", inputs

# An approval round trip: the agent asks (an mcp_approval_request item), the client approves.
write = '[tools:[{"name":"update_resource","arguments":{"resourceType":"appointments","resourceId":"a1","data":{"time":"12:00"}}}]]'
asking = client.responses.create(model="any-model", input="move it " + write)
request = [o for o in asking.output if o.type == "mcp_approval_request"][0]
assert request.name == "update_resource", request
approved = client.responses.create(
    model="any-model",
    previous_response_id=asking.id,
    input=[{"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}],
)
assert approved.output_text.startswith("mock reply"), approved
decided = [o for o in approved.output if o.type == "mcp_call"]
assert decided and decided[0].approval_request_id == request.id and decided[0].output, approved.output
assert client.responses.retrieve(approved.id).output_text == approved.output_text
assert client.responses.input_items.list(approved.id).data == [], "a decision is not an input message"

# Two actions decided in one request, streamed: both decided calls, then the answer.
two = '[tools:[{"name":"update_resource","arguments":{"resourceType":"appointments","resourceId":"a1","data":{"time":"9:00"}}},{"name":"update_resource","arguments":{"resourceType":"appointments","resourceId":"a2","data":{"time":"10:00"}}}]]'
asking = client.responses.create(model="any-model", input="move both " + two, conversation=conv.id)
requests = [o for o in asking.output if o.type == "mcp_approval_request"]
assert len(requests) == 2, asking.output
decisions = [{"type": "mcp_approval_response", "approval_request_id": q.id, "approve": True} for q in requests]
with client.responses.stream(model="any-model", previous_response_id=asking.id, input=decisions) as stream:
    deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    both = stream.get_final_response()
assert [o.type for o in both.output] == ["mcp_call", "mcp_call", "message"], both.output
assert {o.approval_request_id for o in both.output[:2]} == {q.id for q in requests}, both.output
assert "".join(deltas) == both.output_text and both.output_text, (deltas, both.output_text)

# A streamed reply that asks for approval says, as it streams, what it stores.
with client.responses.stream(model="any-model", input="move it " + write, conversation=conv.id) as stream:
    deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    waiting = stream.get_final_response()
assert "".join(deltas) == waiting.output_text == client.responses.retrieve(waiting.id).output_text, deltas

# An assistant message is not a response; a response's metadata is the client's own.
assistant_item = [i for i in client.conversations.items.list(conv.id, limit=100).data if i.type == "message" and i.role == "assistant"][0]
try:
    client.responses.retrieve("resp_" + assistant_item.id.removeprefix("msg_"))
    raise AssertionError("an assistant message was taken for a response")
except openai.NotFoundError:
    pass
tagged = client.responses.create(model="any-model", input="tagged", conversation=conv.id, metadata={"order": "42"})
assert tagged.metadata == {"order": "42"} and client.responses.retrieve(tagged.id).metadata == {"order": "42"}, tagged.metadata
try:
    client.responses.create(model="any-model", input="x", conversation=conv.id, previous_response_id=tagged.id)
    raise AssertionError("conversation and previous_response_id were both accepted")
except openai.BadRequestError as e:
    assert e.param == "previous_response_id", e

# A user named only by safety_identifier (a tenant-wide credential) retrieves their response.
anon = openai.OpenAI(base_url=base + "/v1", api_key="x", default_headers={"x-tenant-id": "t1"})
theirs = anon.responses.create(model="any-model", input="who am I?", safety_identifier="u9", background=True)
for _ in range(100):
    got = anon.responses.retrieve(theirs.id)
    if got.status == "completed":
        break
    time.sleep(0.05)
assert got.status == "completed" and got.output_text.startswith("mock reply to: who am I?"), got

# Queued messages share one reply: deleting one of their responses leaves the reply to the other.
busy = client.conversations.create()
client.responses.create(model="any-model", input="[slow:600] first", conversation=busy.id, background=True)
time.sleep(0.2)
q1 = client.responses.create(model="any-model", input="second", conversation=busy.id, background=True)
q2 = client.responses.create(model="any-model", input="third", conversation=busy.id, background=True)
for _ in range(200):
    if all(client.responses.retrieve(q.id).status == "completed" for q in (q1, q2)):
        break
    time.sleep(0.05)
shared = client.responses.retrieve(q2.id).output_text
assert shared and client.responses.retrieve(q1.id).output_text == shared, shared
client.responses.delete(q1.id)
kept = client.responses.retrieve(q2.id)
assert kept.status == "completed" and kept.output_text == shared, kept

# Deleting a response: gone from retrieve, and its messages from the conversation.
before = len(client.conversations.items.list(conv.id, limit=100).data)
client.responses.delete(r.id)
try:
    client.responses.retrieve(r.id)
    raise AssertionError("a deleted response was found")
except openai.NotFoundError:
    pass
assert len(client.conversations.items.list(conv.id, limit=100).data) == before - 2

try:
    client.responses.create(model="any-model", input="x", store=False)
    raise AssertionError("store=False was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.param == "store", e

# Whatever refuses a request under /v1 (an unknown route, a method the route does not have) answers
# in OpenAI's error shape.
for method, path, status, kind in [
    ("GET", "/v1/nothing-here", 404, "not_found_error"),
    ("PUT", f"/v1/conversations/{conv.id}", 405, "invalid_request_error"),
    ("GET", f"/v1/conversations/{conv.id}/items?limit=abc", 400, "invalid_request_error"),
    ("GET", f"/v1/responses/{r.id}?stream=maybe", 400, "invalid_request_error"),
]:
    headers = {"x-tenant-id": "t1", "x-user-id": "u1", "content-type": "application/json"}
    req = urllib.request.Request(base + path, data=b"{}" if method != "GET" else None, headers=headers, method=method)
    try:
        urllib.request.urlopen(req)
        raise AssertionError(f"{path} answered 2xx")
    except urllib.error.HTTPError as answer:
        assert answer.code == status, (path, answer.code)
        error = json.loads(answer.read())["error"]
    assert error["type"] == kind and "param" in error and error["message"], (path, error)

# Another user (and another tenant) finds none of it: conversations, their items, responses.
for other in ({"x-tenant-id": "t1", "x-user-id": "u2"}, {"x-tenant-id": "t2", "x-user-id": "u1"}):
    stranger = openai.OpenAI(base_url=base + "/v1", api_key="x", default_headers=other)
    for attempt in (
        lambda: stranger.conversations.retrieve(conv.id),
        lambda: stranger.conversations.items.list(conv.id),
        lambda: stranger.conversations.update(conv.id, metadata={"x": "y"}),
        lambda: stranger.conversations.items.create(conv.id, items=[{"type": "message", "role": "user", "content": "hi"}]),
        lambda: stranger.responses.retrieve(tagged.id),
        lambda: stranger.responses.input_items.list(tagged.id),
        lambda: stranger.responses.cancel(tagged.id),
        lambda: stranger.responses.delete(tagged.id),
        lambda: stranger.responses.create(model="any-model", input="hi", previous_response_id=tagged.id),
        lambda: stranger.responses.create(model="any-model", input="hi", conversation=conv.id),
    ):
        try:
            attempt()
            raise AssertionError(f"{other} reached another user's data")
        except openai.NotFoundError:
            pass
assert client.conversations.retrieve(conv.id).metadata == {"topic": "changed", "owner": "me"}
assert client.responses.retrieve(tagged.id).status == "completed"

# Conversations the protocol opened are announced like any session (session.created in the feed).
opened = {conv.id, alone.conversation.id}
for _ in range(100):
    req = urllib.request.Request(base + "/agent/events/t1?types=session.created&limit=100", headers={"x-tenant-id": "t1"})
    seen = {"conv_" + e["data"]["sessionId"] for e in json.loads(urllib.request.urlopen(req).read())}
    if opened <= seen:
        break
    time.sleep(0.1)
assert opened <= seen, (opened, seen)

client.conversations.delete(conv.id)
try:
    client.conversations.retrieve(conv.id)
    raise AssertionError("a deleted conversation was found")
except openai.NotFoundError:
    pass
print("openai: every step passed")
