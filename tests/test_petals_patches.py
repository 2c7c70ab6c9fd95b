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


def test_a_failed_server_leaves_the_route_search_at_once():
    import threading
    from types import SimpleNamespace

    from hivemind import PeerID
    from petals.client.routing.sequence_info import RemoteSequenceInfo
    from petals.client.routing.sequence_manager import RemoteSequenceManager
    from petals.data_structures import RemoteModuleInfo, ServerInfo, ServerState

    petals_patches.apply()
    dead, alive = PeerID(b"dead-replica"), PeerID(b"live-replica")
    uids = [f"model.{i}" for i in range(3)]
    info = RemoteSequenceInfo.make_empty(uids)
    info.update_([RemoteModuleInfo(uid, {peer: ServerInfo(ServerState.ONLINE, 1.0, start_block=0, end_block=3)
                                         for peer in (dead, alive)}) for uid in uids])
    blacklist = SimpleNamespace(register_failure=lambda peer: None)
    manager = SimpleNamespace(state=SimpleNamespace(sequence_info=info, banned_peers=blacklist),
                              lock_changes=threading.Lock(), ready=threading.Event(), update=lambda wait: None)

    RemoteSequenceManager.on_request_failure(manager, dead)
    # Unpatched, the router still finds the dead replica here and a retry may dial it again.
    assert [[span.peer_id for span in spans] for spans in info.spans_containing_block] == [[alive]] * 3
    assert [span.peer_id for span in info.spans_by_priority] == [alive]


def test_a_server_that_cannot_be_reached_is_reported_as_failed(monkeypatch):
    import threading
    from types import SimpleNamespace

    from petals.client import inference_session
    from petals.client.inference_session import InferenceSession

    petals_patches.apply()
    failed, opened = [], []

    async def create(config, p2p, span, *args, **kwargs):  # what p2p's stream_open does for a dead server
        if span.peer_id == "dead":
            raise ConnectionError("failed to dial dead: all dials failed")
        opened.append(span.peer_id)
        return SimpleNamespace(__enter__=lambda: None, __exit__=lambda *exc: opened.remove(span.peer_id))

    monkeypatch.setattr(inference_session._ServerInferenceSession, "create", create)
    manager = SimpleNamespace(block_uids=["m.0", "m.1"], get_request_metadata=lambda *a, **k: {},
                              config=None, state=SimpleNamespace(p2p=None), rpc_info=None,
                              on_request_failure=failed.append, lock_changes=threading.Lock())
    session = SimpleNamespace(_sequence_manager=manager, _max_length=8,
                              _exit_server_sessions=lambda ss: InferenceSession._exit_server_sessions(None, ss))
    spans = [SimpleNamespace(peer_id=p, start=i, end=i + 1) for i, p in enumerate(["alive", "dead"])]
    try:
        InferenceSession._enter_server_sessions(session, spans)
    except ConnectionError:
        pass
    # Unpatched, the step loop can only report "no peer" and the router picks the dead server again.
    assert failed == ["dead"] and opened == []
