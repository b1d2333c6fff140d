"""Long-polls on /status wait on a cheap probe and render the full snapshot once, when ready.

A loaded node signals a change on every engine step; re-rendering the whole snapshot for each
waiting client on each step cost a followed node about a tenth of its CPU in
bench/consensus_live.py."""

from __future__ import annotations

import trio

from node.status_http import StatusApp, _condition


async def test_a_wait_renders_the_snapshot_once_when_the_probe_says_ready() -> None:
    height = {"now": 0}
    renders = {"snapshot": 0, "probe": 0}

    def snapshot() -> dict[str, object]:
        renders["snapshot"] += 1
        return {"peers": [], "supply": {"nodes": 1}, "chain": {"height": height["now"]},
                "announcements": ["expensive"]}  # fmt: skip

    def probe() -> dict[str, object]:
        renders["probe"] += 1
        return {"peers": [], "supply": {"nodes": 1}, "chain": {"height": height["now"]}}

    app = StatusApp(snapshot, lambda: b"")
    app.probe = probe
    ready, timeout_ms = _condition({"wait_height": ["5"], "timeout_ms": ["5000"]})
    result: dict[str, object] = {}

    async def waiter() -> None:
        result["reached"], result["snap"] = await app.wait_until(ready, timeout_ms)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        for h in range(1, 6):
            await trio.sleep(0.01)
            height["now"] = h
            app.changed()
    assert result["reached"] is True
    snap = result["snap"]
    assert isinstance(snap, dict)
    assert snap["chain"] == {"height": 5} and snap["announcements"] == ["expensive"]
    assert renders["probe"] >= 5
    assert renders["snapshot"] == 1


async def test_without_a_probe_the_snapshot_is_waited_on() -> None:
    app = StatusApp(lambda: {"peers": ["a", "b"], "supply": {"nodes": 3}}, lambda: b"")
    ready, timeout_ms = _condition({"wait_peers": ["2"], "timeout_ms": ["100"]})
    reached, snap = await app.wait_until(ready, timeout_ms)
    assert reached and snap["peers"] == ["a", "b"]
    ready, timeout_ms = _condition({"wait_peers": ["3"], "timeout_ms": ["50"]})
    reached, _ = await app.wait_until(ready, timeout_ms)
    assert not reached
