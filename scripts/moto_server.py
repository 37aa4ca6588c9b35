"""The DynamoDB emulator for the tests: moto's server, handling one request at a time.

DynamoDB applies each conditional write atomically, and the store relies on it (an action is
decided once, a webhook delivery claimed once, a summary stored once). moto's threaded server checks
a condition and applies the write without a lock, so two concurrent conditional writes can both
succeed. A lock around the application (connections are still accepted concurrently) restores the
atomicity; moto runs under Python's GIL, so it costs little.

Usage: python3 scripts/moto_server.py HOST PORT"""
import os
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()


def one_at_a_time(environ, start_response):
    with lock:
        # The whole body is produced while the lock is held.
        return list(app(environ, start_response))


run_simple(host, port, one_at_a_time, threaded=True)
