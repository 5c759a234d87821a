"""Trickled candidates reach the media transport, the one LiveKit marks ``final`` too (it is a real candidate:
livekit-server sends its last gathered one, usually the ICE-TCP one, with ``final: true``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from livekit.protocol import models, rtc

from trackegress.room.subscriber import TrackSubscriber
from trackegress.room.transport import IceCandidate, IceServer

UDP = "candidate:2878742611 1 udp 2130706431 127.0.0.1 7882 typ host ufrag srv"
TCP = "candidate:375738803 1 tcp 1671430143 127.0.0.1 7881 typ host tcptype passive ufrag srv"


def trickle(candidate: str, target: int, *, final: bool = False) -> rtc.SignalResponse:
    init = json.dumps({"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": None})
    return rtc.SignalResponse(trickle=rtc.TrickleRequest(candidateInit=init, target=target, final=final))


class ScriptedSignal:
    """The signal channel's side the subscriber reads: a join, then these responses, then nothing more."""

    def __init__(self, responses: Sequence[rtc.SignalResponse]) -> None:
        self.join = rtc.JoinResponse(room=models.Room(name="room"), participant=models.ParticipantInfo(sid="PA_x"))
        self._responses = responses
        self.done = asyncio.Event()

    async def responses(self) -> AsyncIterator[rtc.SignalResponse]:
        for response in self._responses:
            yield response
        self.done.set()
        await asyncio.Event().wait()

    async def send(self, request: rtc.SignalRequest) -> None:
        pass

    async def close(self) -> None:
        pass


class CandidateRecorder:
    """A media transport that only records the remote candidates it is given."""

    def __init__(self, ice_servers: Sequence[IceServer], events: Any) -> None:
        self.candidates: list[str] = []

    async def add_remote_candidate(self, candidate: IceCandidate) -> None:
        self.candidates.append(candidate.candidate)

    async def close(self) -> None:
        pass


async def test_the_final_trickle_is_a_candidate_too_and_publisher_ones_are_not_ours() -> None:
    signal = ScriptedSignal([
        trickle(UDP, rtc.SignalTarget.PUBLISHER),
        trickle(UDP, rtc.SignalTarget.SUBSCRIBER),
        trickle(TCP, rtc.SignalTarget.SUBSCRIBER, final=True),
    ])
    transports: list[CandidateRecorder] = []

    def factory(ice_servers: Sequence[IceServer], events: Any) -> CandidateRecorder:
        transports.append(CandidateRecorder(ice_servers, events))
        return transports[-1]

    subscriber = TrackSubscriber(signal, "TR_x", events=None, transport=factory)  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(signal.done.wait(), 5)
        assert transports[0].candidates == [UDP, TCP]
    finally:
        await subscriber.close()
