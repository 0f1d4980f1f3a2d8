"""The learner's sampling client finds lost sample requests with sample_status, on real ZeroMQ
sockets: against a scripted broker (a ROUTER that loses a request on purpose) and against the
real broker (which says which requests of that socket it holds)."""

import pytest
import zmq

from qrl.protocol import transport, wire
from qrl.learner import LiveCounters
from qrl.sampling import SampleClient
from conftest import wait_for
from test_broker import TOKEN, register, segment, stats


def _next(router, expected_type):
    frames = transport.recv_frames(router, 5000)
    assert frames is not None, f"no {expected_type} within 5 s"
    identity, msg = frames[0], wire.decode(frames[1:])
    assert msg.type == expected_type
    return identity, msg.meta["req"]


def _reply(router, identity, msg_type, meta):
    router.send_multipart([identity, *wire.encode(msg_type, meta)])


def _receive(sampler, expected_type):
    for _ in range(50):
        reply = sampler.receive(100)
        if reply is not None:
            assert reply.type == expected_type
            return reply
    pytest.fail(f"no {expected_type} within 5 s")


def test_a_request_neither_answered_nor_held_is_sent_again_once_and_a_late_answer_is_not_replaced(ctx):
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    sampler = SampleClient(ctx, f"tcp://127.0.0.1:{port}", batch_size=2, in_flight=2, options=dict, token=TOKEN)
    try:
        identity, first = _next(router, "sample")
        _, second = _next(router, "sample")  # "lost": never answered, never held
        _reply(router, identity, "batch", {"req": first})
        assert _receive(sampler, "batch").meta["req"] == first
        _, third = _next(router, "sample")  # the answered request was replaced; this one is held
        sampler.last_status = -1e9  # a status is due
        assert sampler.receive(100) is None
        _, status = _next(router, "sample_status")
        _reply(router, identity, "sample_status", {"req": status, "held": [third]})
        assert sampler.resend_lost(_receive(sampler, "sample_status").meta) == 1
        _, again = _next(router, "sample")
        assert again not in (first, second, third) and set(sampler.outstanding) == {third, again}
        # the same status twice, or one that is not ours: nothing more is sent again
        assert sampler.resend_lost({"req": status, "held": []}) == 0
        assert sampler.resend_lost({"req": 10_000, "held": []}) == 0
        _reply(router, identity, "batch", {"req": second})  # the "lost" one arrives late after all
        assert _receive(sampler, "batch").meta["req"] == second
        assert set(sampler.outstanding) == {third, again} and router.poll(300) == 0  # not replaced
    finally:
        sampler.close()
        router.close()


def test_the_broker_says_which_requests_of_this_socket_it_holds(ctx, client, broker, push):
    register(client)  # min_size 4: requests wait until 4 items are in
    sampler = SampleClient(ctx, broker.address(), batch_size=2, in_flight=3, options=dict, token=TOKEN)
    other = SampleClient(ctx, broker.address(), batch_size=2, in_flight=2, options=dict, token=TOKEN)
    try:
        wait_for(lambda: stats(client)["pending_samples"] == 5, 10, "both sockets' requests held")
        sampler.last_status = -1e9
        status = _receive(sampler, "sample_status").meta
        # the other socket's requests 1 and 2 are held too, and are not this socket's
        assert status["held"] == [1, 2, 3] and status["frames"] == 0 and status["weights_version"] == 0
        assert status["broker_id"] == broker.broker_id
        assert sampler.resend_lost(status) == 0  # all held: nothing is lost
        push.send_multipart(segment(0))  # 8 items: every held request is answered
        batches = [_receive(sampler, "batch").meta["req"] for _ in range(3)]
        assert sorted(batches) == [1, 2, 3]
        assert [_receive(other, "batch").meta["frames"] for _ in range(2)] == [8, 8]  # not the other's
    finally:
        sampler.close()
        other.close()


def test_the_run_s_frames_count_once_when_the_broker_s_reports_arrive_out_of_order():
    """Batches, sample_status and stats replies come on two sockets: a batch queued behind others
    can report a lower frame counter than a stats reply read before it."""
    live = LiveCounters(frames=100, last_eval_frames=0)
    for reported in (1000, 1200, 1000, 1100, 1250):
        live.count_broker_frames(reported)
    assert live.frames == 100 + 1250 and live.broker_frames == 1250
