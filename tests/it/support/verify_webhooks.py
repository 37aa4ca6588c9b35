"""Verifies webhook deliveries with the standardwebhooks package (PyPI), a verifier nobody here wrote.

Reads a JSON list of {"headers": {...}, "body": "..."} on stdin; the secret is the first argument.
Prints the number verified; exits non-zero (with the reason) when one does not verify."""
import json
import sys

from standardwebhooks.webhooks import Webhook

webhook = Webhook(sys.argv[1])
deliveries = json.load(sys.stdin)
for delivery in deliveries:
    payload = webhook.verify(delivery["body"], delivery["headers"])
    assert payload["id"] == delivery["headers"]["webhook-id"], "the webhook-id is the event id"
print(len(deliveries))
