"""Actions: the cost of calling module code as the platform does, through the harness.

    python benchmarks/bench_actions.py [--calls 5000] [--rounds 5] [--quick] [--strict]

An ``@action`` (the stand-in's decorator) that builds a toast response through
``module_sdk.effects`` is called three ways, interleaved round by round; the median of every
call's time is reported against the first (the baseline):

1. ``await act(ctx, session, sdk)`` with one SDK built beforehand (the decorator's own work);
2. ``async with rt.request(...) as sdk: await act(ctx, sdk.session, sdk)``: a request of the
   reference runtime and a new SDK for each call, its ``effects`` built on first use;
3. ``await tb.call_action(act, ctx)``: the harness's call (2, plus recording the response in
   ``tb.emitted``).

Target: ``call_action`` <= 3x the baseline, so a test suite of many actions stays quick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from _common import Targets, call_times, header, median, parser, us

from taskbed_harness import Harness, VirtualClock, action


@action("bench.toast")
async def toast(ctx: dict[str, Any], session: dict[str, Any], module_sdk: Any) -> Any:
    fx = module_sdk.effects
    return fx.respond(fx.notify("toast", {"level": "info", "message": str(ctx.get("n"))}))


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=5_000, help="sequential calls per round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    calls, rounds = (1_000, 3) if args.quick else (args.calls, args.rounds)
    header(f"bench_actions: {calls:,} sequential calls x {rounds} rounds")

    # On a plain loop (real time for the measurement), with a virtual clock for the rows'
    # timestamps: the actions here never sleep, so virtual time has nothing to skip.
    async with Harness(clock=VirtualClock()) as tb:
        rt = tb.runtime
        session = tb.session()
        sdk = rt.sdk(session=session, module="bench")
        ctx = {"n": 1}

        async def in_request() -> object:
            async with rt.request(session=session, module="bench", request_id="r") as fresh:
                return await toast(ctx, fresh.session, fresh)

        async def via_harness() -> object:
            response = await tb.call_action(toast, ctx)
            tb.emitted.items.clear()  # keep the recording from growing across the run
            tb.emitted.responses.clear()
            return response

        variants: dict[str, Callable[[], Awaitable[object]]] = {
            "act(ctx, session, sdk)": lambda: toast(ctx, session, sdk),
            "rt.request() + act(...)": in_request,
            "tb.call_action(act, ctx)": via_harness,
        }
        for call in variants.values():
            await call_times(200, call)
        results: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, call in variants.items():
                results[name].extend(await call_times(calls, call))

    base = median(results["act(ctx, session, sdk)"])
    print(f"{'per call (median of all calls)':32s} {'time':>10s} {'ratio':>7s}")
    for name, values in results.items():
        print(f"{name:32s} {us(median(values)):>10s} {median(values) / base:6.2f}x")
    ratio = median(results["tb.call_action(act, ctx)"]) / base
    targets = Targets()
    targets.check(
        "call_action vs a direct call of the action", f"{ratio:.2f}x", "<= 3x", ratio <= 3
    )
    targets.exit(args.strict)


if __name__ == "__main__":
    asyncio.run(main())
