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
