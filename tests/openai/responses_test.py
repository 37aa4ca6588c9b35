"""The official `openai` Python package against the server's Responses and Conversations APIs:
conversations (create with items, retrieve, items, delete), responses (JSON, streamed with the SDK's
streaming helper, continued with previous_response_id, retrieved), and errors in OpenAI's shape.

Usage: python3 tests/openai/responses_test.py BASE_URL"""

import sys

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

following = client.responses.create(model="any-model", input="and then?", previous_response_id=r.id)
assert following.conversation.id == conv.id, following.conversation

again = client.responses.retrieve(r.id)
assert again.output_text == r.output_text, again

items = client.conversations.items.list(conv.id, order="asc", limit=100)
texts = [part.text for item in items.data for part in item.content]
assert texts[0] == "an earlier question", texts
assert "hello" in texts and "stream me" in texts and "and then?" in texts, texts
assert len(items.data) == 7, texts

try:
    client.responses.create(model="any-model", input="x", store=False)
    raise AssertionError("store=False was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.param == "store", e

client.conversations.delete(conv.id)
try:
    client.conversations.retrieve(conv.id)
    raise AssertionError("a deleted conversation was found")
except openai.NotFoundError:
    pass
print("openai: every step passed")
