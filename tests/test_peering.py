"""The active-replica rule, as Kopf applies it to its peering object."""

from datetime import datetime, timedelta, timezone

from llmops.runtime.peering import Peering

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def peer(priority, seconds_ago=1, lifetime=60):
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - timedelta(seconds=seconds_ago)).isoformat()}


def test_outranked_by_a_live_peer_of_higher_or_equal_priority():
    me = Peering(identity="me", priority=100, standalone=False)
    assert me._outranked({"me": peer(100), "other": peer(200)}, NOW)
    assert me._outranked({"other": peer(100)}, NOW)  # Kopf pauses every replica of equal priority
    assert not me._outranked({"me": peer(100), "other": peer(50)}, NOW)
    assert not me._outranked({"other": peer(200, seconds_ago=120)}, NOW)  # dead peer


def test_standalone_is_never_paused():
    assert Peering(identity="me", priority=0, standalone=True).paused(kube=None) is False
