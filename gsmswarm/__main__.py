import os
import signal
import sys

from .cli import main

# A background job of a non-interactive shell starts with SIGINT ignored, and Python then never raises
# KeyboardInterrupt: restore it, so Ctrl-C / kill -INT stops a run cleanly wherever it was started. SIGTERM (what
# a scheduler, `timeout` or a closing session sends) takes the same path, so a training run writes its checkpoint
# instead of losing the steps since the last one.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, lambda *_: signal.default_int_handler(signal.SIGINT, None))
code = main()
# Every record is flushed and fsynced and the backend and swarm are closed by now. Interpreter teardown can
# still hang in the Petals client's finalizers (seen once in ~40 runs: records and summary written, then no
# exit for 5 minutes), so leave without it.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
