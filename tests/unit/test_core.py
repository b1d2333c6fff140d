"""NodeCore as a pure state machine: announcements, verdicts, penalties, dials, determinism."""

from __future__ import annotations

from node.core import (
    CoreConfig,
    Dial,
    Disconnect,
    GossipIn,
    Input,
    ListenAddrs,
    LocalLoad,
    NodeCore,
    PeerDown,
    PeerUp,
    Ready,
    Tick,
)
from p2p.announcements import TOPIC_CAPACITY, CapacityAnnouncement, GpuSpec, decode_announcement
from p2p.identity import Identity

CHAIN = b"test-chain"


def make_core(label: str, **overrides: object) -> NodeCore:
    cfg = CoreConfig(
        chain_id=CHAIN,
        region="eu-west",
        gpus=(GpuSpec("A100", 4, 81920),),
        gpu_source="declared",
        price_per_gpu_hour=1000,
        **overrides,
    )  # type: ignore[arg-type]
    return NodeCore(Identity.derive("core-test", label), cfg)


def announcement_of(ready: Ready) -> CapacityAnnouncement:
    assert len(ready.publish) == 1 and ready.publish[0].topic == TOPIC_CAPACITY
    return decode_announcement(ready.publish[0].data, CHAIN).record


def test_first_step_announces_and_schedules_the_next() -> None:
    core = make_core("a", announce_interval_ms=2000, announcement_ttl_ms=10_000)
    ready = core.step(5_000, ListenAddrs(("/ip4/127.0.0.1/tcp/1",)))
    ann = announcement_of(ready)
    assert ann.node_id == core.identity.public_key
    assert (ann.issued_ms, ann.expires_ms) == (5_000, 15_000)
    assert ann.addrs == ("/ip4/127.0.0.1/tcp/1",)
    assert ready.wake_at_ms == 7_000
    assert core.step(6_999, Tick()).publish == []
    assert announcement_of(core.step(7_000, Tick())).seq > ann.seq


def test_own_announcement_is_part_of_own_supply() -> None:
    core = make_core("a")
    core.step(1_000, Tick())
    assert core.supply(1_000).gpus == 4


def test_peer_accepts_announcement_and_ignores_duplicates() -> None:
    a, b = make_core("a"), make_core("b")
    data = a.step(1_000, Tick()).publish[0].data
    first = b.step(1_001, GossipIn(TOPIC_CAPACITY, data, a.identity.peer_id))
    assert [e.name for e in first.events] == ["announcement_accepted"]
    again = b.step(1_002, GossipIn(TOPIC_CAPACITY, data, a.identity.peer_id))
    assert again.events == []
    assert b.supply(1_002).nodes == 2
    assert b.verdict_counts == {"accepted": 1, "duplicate": 1}


def test_seq_survives_a_restart_without_persistence() -> None:
    """A restarted node has lost its counter; peers holding its last announcement must still
    accept the next one, or it would vanish from their view until the old one expired."""
    old, observer = make_core("a"), make_core("b")
    for t in (1_000, 3_000, 5_000):
        data = old.step(t, Tick()).publish[0].data
    observer.step(5_001, GossipIn(TOPIC_CAPACITY, data, old.identity.peer_id))
    restarted = make_core("a")
    fresh = restarted.step(5_500, Tick()).publish[0].data
    ready = observer.step(5_501, GossipIn(TOPIC_CAPACITY, fresh, old.identity.peer_id))
    assert [e.name for e in ready.events] == ["announcement_accepted"]
    assert (
        decode_announcement(fresh, CHAIN).record.seq > decode_announcement(data, CHAIN).record.seq
    )


def test_new_peer_triggers_an_early_reannouncement() -> None:
    core = make_core(
        "a", announce_interval_ms=10_000, announcement_ttl_ms=60_000, reannounce_after_peer_ms=1_200
    )
    core.step(0, Tick())
    ready = core.step(6_000, PeerUp("peer-x"))  # our last announcement is half an interval old
    assert ready.wake_at_ms == 7_200
    assert announcement_of(core.step(7_200, Tick()))
    assert core.step(7_300, PeerDown("peer-x")).events[0].name == "peer_down"


def test_peers_arriving_one_after_another_do_not_each_flood_the_network() -> None:
    """Every re-announcement floods the whole network; while a network starts, a node's
    neighbours come up one after another. A re-announcement for a new peer waits until half
    an interval has passed since our last announcement, and serves every peer that came
    meanwhile."""
    core = make_core(
        "a", announce_interval_ms=10_000, announcement_ttl_ms=60_000, reannounce_after_peer_ms=1_200
    )
    assert announcement_of(core.step(0, Tick()))
    announced = [0]
    assert core.step(100, PeerUp("peer-x")).wake_at_ms == 5_000
    assert core.step(3_000, PeerUp("peer-y")).wake_at_ms == 5_000
    assert core.step(4_500, PeerUp("peer-z")).wake_at_ms == 5_000  # already due: it serves z
    for t in range(100, 20_001, 100):
        if core.step(t, Tick()).publish:
            announced.append(t)
        if t == 6_000:
            core.step(t, PeerUp("peer-w"))  # half an interval after 5,000, not 7,200
    assert announced == [0, 5_000, 10_000, 20_000]


def test_local_load_change_is_announced_at_once() -> None:
    core = make_core("a")
    core.step(0, Tick())
    ann = announcement_of(core.step(10, LocalLoad(free_gpus=1, load_permille=750)))
    assert (ann.free_gpus, ann.load_permille) == (1, 750)
    assert core.step(20, LocalLoad(free_gpus=1, load_permille=750)).publish == []


def test_malformed_gossip_is_rejected_and_repeat_offenders_are_disconnected() -> None:
    core = make_core("a", penalties_max=3)
    core.step(0, PeerUp("bad-peer"))
    outcomes = [
        core.step(i, GossipIn(TOPIC_CAPACITY, b"\x93garbage", "bad-peer")) for i in range(1, 4)
    ]
    assert all(o.events[-1].name == "announcement_rejected" for o in outcomes)
    assert outcomes[0].events[-1].as_dict()["verdict"] == "malformed"
    assert outcomes[0].disconnect == [] and outcomes[1].disconnect == []
    assert outcomes[2].disconnect[0].peer == "bad-peer"
    assert isinstance(outcomes[2].disconnect[0], Disconnect)


def test_tampered_announcement_is_a_bad_signature() -> None:
    a, b = make_core("a"), make_core("b")
    data = bytearray(a.step(1_000, Tick()).publish[0].data)
    data[-1] ^= 0x01
    ready = b.step(1_001, GossipIn(TOPIC_CAPACITY, bytes(data), a.identity.peer_id))
    assert ready.events[-1].as_dict()["verdict"] == "bad_signature"
    assert b.supply(1_001).nodes == 1


def test_expired_announcements_leave_the_view() -> None:
    a, b = make_core("a"), make_core("b", announce_interval_ms=60_000, announcement_ttl_ms=100_000)
    b.step(0, Tick())
    data = a.step(1_000, Tick()).publish[0].data  # a's ttl is 30 s
    b.step(1_001, GossipIn(TOPIC_CAPACITY, data, a.identity.peer_id))
    ready = b.step(31_000, Tick())
    assert [e.name for e in ready.events] == ["announcement_expired"]
    assert b.supply(31_000).nodes == 1


def test_dials_known_nodes_when_short_of_peers_but_not_too_often() -> None:
    a, b = make_core("a"), make_core("b", peers_target=2, dial_retry_ms=10_000)
    data = a.step(1_000, ListenAddrs(("/ip4/127.0.0.1/tcp/9",))).publish[0].data
    ready = b.step(1_001, GossipIn(TOPIC_CAPACITY, data, "relay"))
    assert ready.dial == [Dial(a.identity.peer_id, ("/ip4/127.0.0.1/tcp/9",))]
    assert b.step(5_000, Tick()).dial == []
    assert b.step(11_001, Tick()).dial != []
    b.step(11_002, PeerUp(a.identity.peer_id))
    assert b.step(30_000, Tick()).dial == []


def test_same_inputs_give_the_same_outputs() -> None:
    def run() -> list[Ready]:
        a, b = make_core("a"), make_core("b")
        out = [a.step(0, ListenAddrs(("/ip4/127.0.0.1/tcp/1",)))]
        out.append(b.step(1, GossipIn(TOPIC_CAPACITY, out[0].publish[0].data, "x")))
        out.append(b.step(2, PeerUp(a.identity.peer_id)))
        out.extend(c.step(t, Tick()) for t in (1_300, 2_000, 4_000) for c in (a, b))
        return out

    assert run() == run()


def announce_all(b: NodeCore, count: int, at: int) -> tuple[list[NodeCore], list[str]]:
    """`count` nodes with addresses, each announcing to `b` at `at`; the dials `b` made."""
    nodes, dials = [make_core(f"n{i}") for i in range(count)], []
    for i, n in enumerate(nodes):
        data = n.step(at - 1, ListenAddrs((f"/ip4/127.0.0.1/tcp/{10 + i}",))).publish[0].data
        dials += [d.peer for d in b.step(at, GossipIn(TOPIC_CAPACITY, data, "x")).dial]
    return nodes, dials


def dialled_at(b: NodeCore, t: int, inp: Input | None = None) -> list[str]:
    return [d.peer for d in b.step(t, Tick() if inp is None else inp).dial]


def test_dials_under_way_count_towards_the_target_so_a_short_node_does_not_dial_everyone() -> None:
    """Each step used to dial another batch while short of peers: a node that wanted 2 peers
    and knew 6 nodes dialled all 6 within three gossip messages."""
    b = make_core("b", peers_target=2, dial_retry_ms=10_000)
    b.step(0, Tick())
    _, (first, second) = announce_all(b, 6, 1_001)  # two dials under way fill the target
    assert dialled_at(b, 5_000, PeerUp(first)) == []  # a dial became a peer: still 2 in all
    b.step(6_000, PeerUp("an-inbound-peer"))
    assert dialled_at(b, 7_000, PeerDown("an-inbound-peer")) == []  # 1 peer + 1 under way
    replacement = dialled_at(b, 8_000, PeerDown(first))
    assert len(replacement) == 1 and replacement[0] not in (first, second)
    assert dialled_at(b, 11_000) == []  # the second dial is under way for 10 s ...
    again = dialled_at(b, 11_001)  # ... and then given up, for a node not tried yet
    assert len(again) == 1 and again[0] not in (first, second, *replacement)
    assert dialled_at(b, 11_200) == []


def test_a_node_whose_first_choices_never_connect_goes_on_to_the_others() -> None:
    """The core hears of no failed dial, only of peers. Candidates go in id order with the
    failed ones last, longest failed first: every known node is tried before the first,
    unreachable, ones again."""
    b = make_core("b", peers_target=2, dial_retry_ms=5_000)  # within the announcements' ttl
    nodes, first = announce_all(b, 6, 1_001)
    batches = [first] + [dialled_at(b, t) for t in (6_000, 6_001, 11_001, 16_001)]
    assert batches[1] == []  # the first two dials are still under way
    del batches[1]
    assert all(len(batch) == 2 for batch in batches), batches
    assert {p for batch in batches[:3] for p in batch} == {n.identity.peer_id for n in nodes}
    assert set(batches[3]) == set(batches[0])  # failed longest ago


def test_gossip_from_peers_and_dialled_nodes_does_not_make_a_short_node_rescan() -> None:
    a, c = make_core("a"), make_core("c")
    b = make_core("b", peers_target=3, dial_retry_ms=10_000)
    scans: list[int] = []
    live = b.book.live
    b.book.live = lambda now_ms: (scans.append(now_ms), live(now_ms))[1]  # type: ignore[method-assign]
    data_a = a.step(1_000, ListenAddrs(("/ip4/127.0.0.1/tcp/9",))).publish[0].data
    assert len(dialled_at(b, 1_001, GossipIn(TOPIC_CAPACITY, data_a, "x"))) == 1
    assert scans == [1_001]
    later_a = a.step(3_000, Tick()).publish[0].data
    b.step(3_001, GossipIn(TOPIC_CAPACITY, later_a, "x"))
    assert scans == [1_001]  # a is being dialled: nothing new to scan for
    data_c = c.step(3_000, ListenAddrs(("/ip4/127.0.0.1/tcp/8",))).publish[0].data
    assert dialled_at(b, 3_002, GossipIn(TOPIC_CAPACITY, data_c, "x")) == [c.identity.peer_id]
    assert scans == [1_001, 3_002]
