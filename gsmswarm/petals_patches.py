"""Narrow fixes to the Petals 2.2 client, applied once when the petals backend loads (`apply`). One function
per fix, each saying what goes wrong upstream, what we saw, and which test fails without it."""
import logging
import threading

log = logging.getLogger(__name__)
_applied = False


def apply() -> None:
    global _applied
    if not _applied:
        for patch in (finalizer_outside_the_event_loop, bounded_route_wait, failover_keeps_the_position,
                      failed_server_leaves_the_routes, unreachable_server_is_blamed):
            patch()
        _applied = True


def finalizer_outside_the_event_loop() -> None:
    """Finalizer deadlock. `_ServerInferenceSession.__del__` closes the session's stream by submitting a
    coroutine to hivemind's RemoteExpertWorker event-loop thread and blocking until it finishes. A session that
    was not closed cleanly is garbage, often in a reference cycle, and the cycle collector may run in any
    thread, including that event-loop thread: there the finalizer waits for itself forever. We saw exactly this
    after 60 problems of a CoT run (py-spy: `__del__` inside `_step`'s `asyncio.wait_for`; the client never
    recovered). Fix: inside the loop thread, schedule the close as a task instead of waiting for it.
    Test: test_petals_patches.py::test_session_finalizer_inside_the_event_loop_does_not_deadlock."""
    from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker
    from petals.client.inference_session import _ServerInferenceSession

    original_del = _ServerInferenceSession.__del__

    async def _close_later(session) -> None:
        try:
            await session._aclose_stream()
        except Exception as e:  # the stream is being dropped anyway; there is nobody to report to
            log.debug("closing a dropped inference stream failed: %r", e)
        session._outputs_stream = session._inputs_queue = None
        session.closed = True

    def __del__(self) -> None:
        if threading.current_thread() is RemoteExpertWorker._event_thread:
            if getattr(self, "_outputs_stream", None) is not None:
                RemoteExpertWorker._event_loop_fut.result().create_task(_close_later(self))
            return
        original_del(self)

    _ServerInferenceSession.__del__ = __del__


def bounded_route_wait() -> None:
    """Unbounded route wait. `RemoteSequenceManager.make_sequence` waits for its routing thread with
    `ready.wait()` and no timeout. When the client's DHT cannot answer (its process hung or died), that thread
    only logs and tries again every `update_period`, so the caller waits forever and Petals' own retry limit
    never applies: CI sat there for 80 minutes. Fix: wait at most `request_timeout`, then raise, which the
    inference and forward loops count as one failed attempt.
    Test: test_petals_patches.py::test_route_wait_is_bounded."""
    from petals.client.routing.sequence_manager import RemoteSequenceManager

    original_update = RemoteSequenceManager.update

    def update(self, *, wait: bool) -> None:
        original_update(self, wait=False)
        if wait and not self.ready.wait(self.config.request_timeout):
            raise TimeoutError(f"no route through the swarm within {self.config.request_timeout:.0f} s: "
                               f"the client's DHT did not list the servers")

    RemoteSequenceManager.update = update


def failover_keeps_the_position() -> None:
    """Failover (upstream issue #587). When a server dies during generation,
    `InferenceSession._update_sequence` opens a session on a replacement server and hands it the failed
    session's input history, but not its position: the replacement starts at 0, its first step finds a history
    longer than position + new tokens, and every retry fails with "Broken input cache". Fix: the replacement
    also takes the failed session's position, so it sends the whole history once and rebuilds the cache.
    Test: test_faults.py::test_generation_fails_over_to_a_replica_with_the_same_tokens."""
    from petals.client.inference_session import InferenceSession

    original_update_sequence = InferenceSession._update_sequence

    def _update_sequence(self, server_idx: int, block_idx: int, attempt_no: int):
        failed = self._server_sessions[server_idx] if server_idx < len(self._server_sessions) else None
        original_update_sequence(self, server_idx, block_idx, attempt_no)
        if failed is not None:
            self._server_sessions[server_idx]._position = failed._position

    InferenceSession._update_sequence = _update_sequence


def failed_server_leaves_the_routes() -> None:
    """Stale routes after a failure. `RemoteSequenceManager.on_request_failure` removes the failed server from
    each block's server list but not from the spans the router searches (`spans_containing_block`, only rebuilt
    by the next full DHT update), so a retry may be routed to the dead server again, and with replicas of equal
    latency it often is: CI lost a failover run after all four attempts dialled the killed replica. Fix: rebuild
    the spans from the updated server lists right after the removal.
    Test: test_petals_patches.py::test_a_failed_server_leaves_the_route_search_at_once."""
    from petals.client.routing.sequence_manager import RemoteSequenceManager

    original_on_request_failure = RemoteSequenceManager.on_request_failure

    def on_request_failure(self, peer_id) -> None:
        original_on_request_failure(self, peer_id)
        info = self.state.sequence_info
        with self.lock_changes:
            info.spans_by_priority, info.spans_containing_block = info._sort_spans(info.block_infos)

    RemoteSequenceManager.on_request_failure = on_request_failure


def unreachable_server_is_blamed() -> None:
    """Unreachable servers are never blamed. When opening the session on a chosen server fails (it died, but
    its DHT record has not expired yet), `InferenceSession.step` reports the failure with no peer, because the
    server session was never created; nothing is banned, the router picks the same dead server on every try,
    and the generation fails although a live server holds the blocks (CI: a server restarted after a failure,
    the dead one's record still in the DHT). Fix: open the sessions one span at a time and report a span that
    cannot be opened as that server's failure.
    Test: test_petals_patches.py::test_a_server_that_cannot_be_reached_is_reported_as_failed."""
    from petals.client.inference_session import InferenceSession

    original_enter = InferenceSession._enter_server_sessions

    def _enter_server_sessions(self, chosen_spans):
        sessions = []
        for span in chosen_spans:
            try:
                sessions += original_enter(self, [span])
            except Exception:
                self._exit_server_sessions(sessions)
                self._sequence_manager.on_request_failure(span.peer_id)
                raise
        return sessions

    InferenceSession._enter_server_sessions = _enter_server_sessions
