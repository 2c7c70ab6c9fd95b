"""Each fix in gsmswarm.petals_patches, tested so that the test fails without the fix."""
import asyncio

from gsmswarm import petals_patches


def test_session_finalizer_inside_the_event_loop_does_not_deadlock():
    from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker
    from petals.client.inference_session import _ServerInferenceSession

    petals_patches.apply()
    closed = []

    class Session:  # the state `close` looks at, without a real stream
        _outputs_stream = "open"
        _inputs_queue = None
        close = _ServerInferenceSession.close

        async def _aclose_stream(self):
            closed.append(True)

    session = Session()

    async def collect_inside_loop():
        _ServerInferenceSession.__del__(session)  # what the cycle collector does in the loop thread
        await asyncio.sleep(0.1)  # let the scheduled close run

    # Unpatched, this waits on the loop thread from the loop thread and never returns.
    RemoteExpertWorker.run_coroutine(collect_inside_loop(), return_future=True).result(timeout=10)
    assert closed == [True] and session._outputs_stream is None

    outside = Session()
    _ServerInferenceSession.__del__(outside)  # from any other thread the original close still runs
    assert closed == [True, True] and outside._outputs_stream is None


def test_route_wait_is_bounded():
    import threading
    from types import SimpleNamespace

    from petals.client.routing.sequence_manager import RemoteSequenceManager

    petals_patches.apply()
    # A sequence manager whose routing thread never becomes ready (the client's DHT does not answer).
    manager = SimpleNamespace(ready=threading.Event(), _thread=SimpleNamespace(trigger=threading.Event()),
                              config=SimpleNamespace(request_timeout=0.5))
    raised = []

    def call():
        try:
            RemoteSequenceManager.update(manager, wait=True)
        except TimeoutError as e:
            raised.append(e)

    waiter = threading.Thread(target=call, daemon=True)
    waiter.start()
    waiter.join(timeout=10)  # unpatched, the call never returns
    assert not waiter.is_alive() and raised and "no route" in str(raised[0])
    assert manager._thread.trigger.is_set()  # the routing thread was still asked to update
