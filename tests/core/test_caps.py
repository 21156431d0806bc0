"""ConnectionCaps: the per-address and per-user connection counts, without sockets."""

from __future__ import annotations

from trio_rt._core.caps import ConnectionCaps


def test_counts_against_limits_and_releases_once() -> None:
    caps = ConnectionCaps(per_ip=2, per_user=1)
    assert not caps.ip_full("1.2.3.4")
    caps.count_ip("a", "1.2.3.4")
    caps.count_ip("b", "1.2.3.4")
    assert caps.ip_full("1.2.3.4") and not caps.ip_full("5.6.7.8")
    caps.count_user("a", "ann")
    assert caps.user_full("ann") and not caps.user_full("bob")
    assert not caps.user_full(None) and not caps.ip_full(None)  # unknown: never capped
    caps.release("a")
    caps.release("a")  # idempotent
    assert caps.open_for(ip="1.2.3.4") == 1 and caps.open_for(user="ann") == 0
    caps.release("b")
    assert caps.open_for(ip="1.2.3.4") == 0
    assert caps._per_ip == {} and caps._per_user == {} and caps._counted == {}  # no leak


def test_no_limit_counts_nothing() -> None:
    caps = ConnectionCaps(per_ip=None, per_user=None)
    for i in range(100):
        caps.count_ip(str(i), "1.2.3.4")
        caps.count_user(str(i), "ann")
    assert not caps.ip_full("1.2.3.4") and not caps.user_full("ann")
    assert caps._counted == {}
