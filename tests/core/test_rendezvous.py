"""Rendezvous hashing (sans-IO): deterministic, uniform, minimal remapping, weights."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_rt._core.rendezvous import rendezvous_owner, rendezvous_rank, rendezvous_score

SERVERS = [f"server-{i}" for i in range(5)]
KEYS = [f"user:{i}" for i in range(10_000)]

server_ids = st.text(
    alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
    min_size=1,
    max_size=12,
)


def owners(servers: list[str], weights: dict[str, float] | None = None) -> dict[str, str]:
    result = {}
    for key in KEYS:
        owner = rendezvous_owner(key, servers, weights)
        assert owner is not None
        result[key] = owner
    return result


def test_known_values_are_stable() -> None:
    # The score is BLAKE2b-64 of key NUL server: pinned, so that a change of the hash (which
    # would remap every key across a rolling upgrade) cannot go unnoticed.
    expected = int.from_bytes(hashlib.blake2b(b"alice\x00s1", digest_size=8).digest(), "big")
    assert rendezvous_score("alice", "s1") == float(expected)
    assert rendezvous_score(b"alice", "s1") == float(expected)
    rank = rendezvous_rank("alice", ["s1", "s2", "s3"])
    assert sorted(rank) == ["s1", "s2", "s3"]
    assert rank[0] == rendezvous_owner("alice", ["s3", "s2", "s1"])


def test_same_answer_in_another_process() -> None:
    # Python's hash() is randomized per process; ours must not be.
    code = (
        "from trio_rt._core.rendezvous import rendezvous_rank;"
        "print(','.join(rendezvous_rank('alice', ['a', 'b', 'c', 'd'])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONHASHSEED": "12345"},
    ).stdout.strip()
    assert out.split(",") == rendezvous_rank("alice", ["a", "b", "c", "d"])


@given(key=st.text(), servers=st.lists(server_ids, min_size=1, max_size=8))
def test_deterministic_and_independent_of_order(key: str, servers: list[str]) -> None:
    owner = rendezvous_owner(key, servers)
    assert owner in servers
    assert owner == rendezvous_owner(key, list(reversed(servers)))
    assert owner == rendezvous_owner(key, set(servers))
    rank = rendezvous_rank(key, servers)
    assert rank[0] == owner
    assert sorted(rank) == sorted(set(servers))
    assert rank == rendezvous_rank(key, sorted(servers))


def test_no_servers() -> None:
    assert rendezvous_owner("k", []) is None
    assert rendezvous_rank("k", []) == []


def test_uniform_spread() -> None:
    counts = Counter(owners(SERVERS).values())
    assert set(counts) == set(SERVERS)
    expected = len(KEYS) / len(SERVERS)
    chi2 = sum((counts[s] - expected) ** 2 / expected for s in SERVERS)
    # 4 degrees of freedom: P(chi2 > 30) is about 5e-6. Deterministic inputs, so no flakiness;
    # the bound only catches a badly skewed hash.
    assert chi2 < 30, counts


def test_removing_a_server_moves_only_its_keys() -> None:
    before = owners(SERVERS)
    gone = "server-2"
    after = owners([s for s in SERVERS if s != gone])
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == gone}
    # Each moved key goes to its runner-up.
    for k in list(moved)[:200]:
        assert after[k] == rendezvous_rank(k, SERVERS)[1]


def test_adding_a_server_moves_about_one_in_n_plus_one_keys_all_to_it() -> None:
    before = owners(SERVERS)
    after = owners([*SERVERS, "server-new"])
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "server-new" for k in moved)
    share = len(moved) / len(KEYS)
    assert abs(share - 1 / 6) < 0.03, share


@given(
    keys=st.lists(st.text(), min_size=1, max_size=30),
    servers=st.lists(server_ids, min_size=2, max_size=8, unique=True),
    data=st.data(),
)
@settings(max_examples=50)
def test_minimal_remapping_property(
    keys: list[str], servers: list[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(servers))
    rest = [s for s in servers if s != gone]
    for key in keys:
        before = rendezvous_owner(key, servers)
        after = rendezvous_owner(key, rest)
        if before != gone:
            assert after == before  # removal: only the leaver's keys move
        again = rendezvous_owner(key, servers)
        assert again in (after, gone)  # rejoining: keys move only to the newcomer


def test_weights_skew_proportionally() -> None:
    weights = {"server-0": 3.0, "server-1": 1.0, "server-2": 1.0, "server-3": 1.0}
    servers = list(weights)
    counts = Counter(owners(servers, weights).values())
    total = sum(weights.values())
    for server, weight in weights.items():
        share = counts[server] / len(KEYS)
        assert abs(share - weight / total) < 0.03, (server, share)


def test_equal_weights_change_nothing() -> None:
    weighted = owners(SERVERS, {s: 2.5 for s in SERVERS})
    assert weighted == owners(SERVERS)


def test_weighted_minimal_remapping() -> None:
    weights = {s: float(i + 1) for i, s in enumerate(SERVERS)}
    before = owners(SERVERS, weights)
    after = owners(SERVERS[:-1], weights)
    assert {k for k in KEYS if before[k] != after[k]} == {
        k for k in KEYS if before[k] == SERVERS[-1]
    }


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_weights_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        rendezvous_owner("k", ["a"], {"a": bad})


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        rendezvous_owner("k", ["a\x00b"])
    with pytest.raises(TypeError):
        rendezvous_owner(1, ["a"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rendezvous_rank("k", [1])  # type: ignore[list-item]
