import os
import signal
import sys

from .cli import main

# A background job of a non-interactive shell starts with SIGINT ignored, and Python then never raises
# KeyboardInterrupt: restore it, so Ctrl-C / kill -INT stops a run cleanly wherever it was started. SIGTERM (what
# a scheduler, `timeout` or a closing session sends) takes the same path, so a training run writes its checkpoint
# instead of losing the steps since the last one. A process forked from this one (the Petals client's DHT) keeps
# the handler but ignores the signal, as hivemind has it ignore SIGINT: killed first, it left the client waiting on
# it forever (1 in 3 tries, SIGTERM to the process group); this process stops it on the way out.
MAIN_PID = os.getpid()


def _terminate(signum, frame):
    if os.getpid() == MAIN_PID:
        signal.default_int_handler(signum, frame)


signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, _terminate)
code = main()
# Every record is flushed and fsynced and the backend and swarm are closed by now. Interpreter teardown can
# still hang in the Petals client's finalizers (seen once in ~40 runs: records and summary written, then no
# exit for 5 minutes), so leave without it.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
