"""An acting process's side of credit-based flow control (docs/protocol.md, "Flow control"): before
it collects a segment, it asks the broker for a credit for that segment's seq and waits for it.

An actor process asks and waits (wait_for_credit); the central inference server asks for all its
streams at once without blocking (CreditLine) and acts for a stream only once its next segment is
granted, holding that env actor's step reply meanwhile.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import zmq

from qrl.protocol import transport, wire

log = logging.getLogger("qrl.actor")

REPORT_AFTER_S, REPORT_EVERY_S = transport.REPORT_EVERY_S, 60.0
"""A wait for credit is reported after REPORT_AFTER_S, then every REPORT_EVERY_S (it is how a
learner-bound run looks, and 32 actors must not flood the log with it)."""
RETRY_S = 0.5
"""Pause before asking again after an error reply (no run yet, too many waiting)."""


class WrongRun(RuntimeError):
    """The broker serves another run than the one asked about."""


def credit_meta(run_id: str, actor_id: int, incarnation: str, seq: int) -> dict[str, Any]:
    return {"run_id": run_id, "actor_id": actor_id, "incarnation": incarnation, "seq": seq}


def wait_for_credit(client: transport.Client, run_id: str, actor_id: int, incarnation: str, seq: int,
                    should_stop: Callable[[], bool], role: str) -> None:
    """Block until the broker grants segment seq. Raises WrongRun when the broker serves another
    run, transport.BrokerUnavailable when stopped while waiting."""
    start, next_report = time.monotonic(), time.monotonic() + REPORT_AFTER_S
    while True:
        reply = client.request("credit", credit_meta(run_id, actor_id, incarnation, seq), wait_s=None,
                               report=log.warning, should_stop=should_stop)
        if reply.type == "credit" and reply.meta.get("until", -1) >= seq:
            return
        if reply.type == "error":
            if reply.meta.get("reason") == "wrong_run":
                raise WrongRun(reply.meta.get("detail", "the broker serves another run"))
            log.warning("%s: credit refused: %s %s", role, reply.meta.get("reason"), reply.meta.get("detail"))
            time.sleep(RETRY_S)
        if should_stop():
            raise transport.BrokerUnavailable(f"{role}: stopped while waiting for credit")
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + REPORT_EVERY_S
            log.info("%s: waiting %.0f s for credit to collect segment %d: the learner is still training on "
                     "what came before (a learner-bound run: fewer actors would collect as much)", role,
                     time.monotonic() - start, seq)


class CreditLine:
    """Credit requests for many streams on one DEALER, none blocking: ask() sends (at most one
    request per stream at a time), granted() reads the replies. A request unanswered for
    TIMEOUT_S (a lost connection, a restarted broker) is sent again."""

    TIMEOUT_S = 2.5

    def __init__(self, ctx: zmq.Context, address: str, run_id: str):
        self.ctx, self.address, self.run_id = ctx, address, run_id
        self.sock = transport.socket(ctx, zmq.DEALER)
        self.sock.connect(address)
        self.asked: dict[Any, tuple[int, int, str, int, float]] = {}  # stream -> (req, actor, incarnation, seq, at)
        self.next_req = 1

    def ask(self, stream: Any, actor_id: int, incarnation: str, seq: int) -> None:
        """Ask for stream's segment seq, unless a request for it is on its way."""
        asked = self.asked.get(stream)
        if asked is not None and asked[3] == seq:
            return
        self._send(stream, actor_id, incarnation, seq)

    def _send(self, stream: Any, actor_id: int, incarnation: str, seq: int) -> None:
        req, self.next_req = self.next_req, self.next_req + 1
        self.asked[stream] = (req, actor_id, incarnation, seq, time.monotonic())
        transport.send(self.sock, "credit", {"req": req, **credit_meta(self.run_id, actor_id, incarnation, seq)},
                       flags=zmq.NOBLOCK)

    def forget(self, stream: Any) -> None:
        self.asked.pop(stream, None)

    def granted(self) -> list[tuple[Any, int]]:
        """(stream, until) for each answer that came; a stream answered below its seq is asked again."""
        by_req = {a[0]: s for s, a in self.asked.items()}
        out = []
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                reply = wire.decode(frames)
            except zmq.Again:
                break
            except wire.WireError as exc:
                log.warning("inference: ignored a malformed credit reply (%s)", exc)
                continue
            stream = by_req.pop(reply.meta.get("req"), None)
            if stream is None:
                continue  # an answer to a request sent again since
            _, actor_id, incarnation, seq, _ = self.asked.pop(stream)
            if reply.type == "error":
                if reply.meta.get("reason") == "wrong_run":
                    raise WrongRun(reply.meta.get("detail", "the broker serves another run"))
                log.warning("inference: credit refused: %s %s", reply.meta.get("reason"), reply.meta.get("detail"))
                self.asked[stream] = (-1, actor_id, incarnation, seq, time.monotonic())  # again after TIMEOUT_S
                continue
            until = reply.meta.get("until", -1) if reply.type == "credit" else -1
            out.append((stream, until))
            if until < seq:  # held past the broker's hold time, or refused for now: ask again
                self._send(stream, actor_id, incarnation, seq)
        return out

    def resend_lost(self) -> None:
        """Requests unanswered for TIMEOUT_S go again (the socket's heartbeats re-establish a lost
        connection; a restarted broker never saw them)."""
        now = time.monotonic()
        for stream, (_, actor_id, incarnation, seq, at) in list(self.asked.items()):
            if now - at > self.TIMEOUT_S:
                self._send(stream, actor_id, incarnation, seq)

    def close(self) -> None:
        self.sock.close(linger=0)
