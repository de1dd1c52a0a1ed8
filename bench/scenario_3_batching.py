"""3. Triton's dynamic batching on vs off, and a small sweep of serving settings.

Same ``model.onnx``, two served configs: ``tritonvision serve``'s CPU default (dynamic
batching with a 0 us queue delay, 2 instances) and a copy whose ``dynamic_batching``
block is cleared (made with ``model_config_pb2``). Load: ``AsyncVisionClient.embed``
of pre-made uint8 pixels from N concurrent tasks, one image per request (the client's
default), so any batching is Triton's. Then a sweep of queue delay and instance count
(ORT threads split between instances) at the highest concurrency.
"""

from __future__ import annotations

from functools import partial

from ._context import Context, Scenario
from ._load import Measurement, alternate, measure_client_embed, side_from
from ._report import Row
from ._repos import FP32, NO_BATCHING

__all__ = ["SCENARIO"]

NUMBER = 3
TITLE = "Dynamic batching on vs off"
TARGET = 1.5
# Triton 2.51's dynamic batcher sometimes waits its 500 ms idle timeout (see BENCHMARKS.md).
STALL_S = 0.4


def _detail(m: Measurement, stalls: bool = False) -> str:
    text = (
        f"CPU/img: client {m.extra['client_cpu_ms']:.2f} ms, "
        f"server {m.extra['server_cpu_ms']:.2f} ms"
    )
    if stalls:
        slow = sum(1 for x in m.latencies_s if x > STALL_S)
        text += f"; calls over {STALL_S * 1000:.0f} ms: {slow} of {m.calls}"
    return text


def _low_load(ctx: Context) -> None:
    """Concurrency 1 on the tiny encoder: what batching costs a lone caller.

    A lone request waits out the whole queue delay, and with one busy instance the
    batcher sometimes sleeps ~500 ms before it notices the instance is free again.
    """
    served = ctx.served("tiny")
    repo = served.repo
    on, off = repo.model, repo.name_of(NO_BATCHING)
    served.use([on, off])
    results = alternate(
        {
            name: partial(
                measure_client_embed, served.http_url, name, 1, ctx.measure_s, served.cpu_seconds
            )
            for name in (on, off)
        },
        ctx.rounds,
    )
    ctx.emit(
        Row(
            scenario=NUMBER,
            case="batching on vs off, concurrency 1 (a lone caller)",
            ours=side_from("on (0 us queue delay)", results[on], detail=_detail(results[on], True)),
            baseline=side_from("off", results[off], detail=_detail(results[off], True)),
            model=repo.encoder.spec.label,
            settings="concurrency 1, 1 image per request, HTTP; 2 instances, 1 ORT thread each",
        )
    )
    # Long pauses at low load: count them per serving variant (same lone caller).
    counts = []
    for suffix in ("", "_i1", "_q2000", NO_BATCHING.suffix):
        name = repo.model + suffix
        served.use([name])
        m = measure_client_embed(served.http_url, name, 1, ctx.measure_s, served.cpu_seconds)
        slow = sum(1 for x in m.latencies_s if x > STALL_S)
        counts.append(
            f"{repo.variants[name].describe()}: {slow} of {m.calls} calls "
            f"(p99 {m.percentile_ms(99) or 0:.1f} ms)"
        )
    ctx.note(
        f"Calls slower than {STALL_S * 1000:.0f} ms with one caller on the tiny encoder "
        "(Triton's dynamic batcher with a busy single instance can sleep ~500 ms before "
        "it dispatches the next request): " + "; ".join(counts) + "."
    )
    served.use([])


def run(ctx: Context) -> None:
    key = "tiny" if ctx.quick else "b32"
    served = ctx.served(key)
    repo = served.repo
    label = repo.encoder.spec.label
    on, off = repo.model, repo.name_of(NO_BATCHING)
    threads = 1 if key == "tiny" else ctx.cores
    served.use([on, off])
    concurrencies = (8,) if ctx.quick else (8, 32)
    measured: dict[tuple[str, int], Measurement] = {}
    for concurrency in concurrencies:
        results = alternate(
            {
                name: partial(
                    measure_client_embed,
                    served.http_url,
                    name,
                    concurrency,
                    ctx.measure_for(key),
                    served.cpu_seconds,
                )
                for name in (on, off)
            },
            ctx.rounds,
        )
        measured[(on, concurrency)] = results[on]
        measured[(off, concurrency)] = results[off]
        ctx.emit(
            Row(
                scenario=NUMBER,
                case=f"batching on vs off, concurrency {concurrency}",
                ours=side_from("on (0 us queue delay)", results[on], detail=_detail(results[on])),
                baseline=side_from("off", results[off], detail=_detail(results[off])),
                model=label,
                settings=(
                    f"concurrency {concurrency}, 1 image per request, HTTP; "
                    f"{served.repo.variants[on].describe()}"
                ),
                target=TARGET if key == "b32" else None,
            )
        )

    top = concurrencies[-1]
    default = measured[(on, top)]
    sweep = [v for name, v in repo.variants.items() if name not in (on, off, repo.name_of(FP32))]
    if ctx.quick:
        sweep = sweep[:1]
    best: tuple[float, str] = (default.throughput, repo.variants[on].describe())
    for variant in sweep:
        name = repo.name_of(variant)
        served.use([name, on])
        m = measure_client_embed(
            served.http_url, name, top, ctx.measure_for(key), served.cpu_seconds
        )
        v_threads = variant.ort_threads or max(1, threads // variant.instances)
        ctx.emit(
            Row(
                scenario=NUMBER,
                case=f"sweep: {variant.describe()} vs exported default, concurrency {top}",
                ours=side_from(name, m, detail=_detail(m)),
                baseline=side_from(f"{on} (default)", default),
                model=label,
                settings=f"{variant.describe()}, {v_threads} ORT thread(s) per instance",
            )
        )
        p99, best_p99 = m.percentile_ms(99) or 0.0, default.percentile_ms(99) or 0.0
        # Worth switching only for a clear gain that does not blow up the tail.
        if m.throughput > best[0] * 1.05 and p99 <= best_p99 * 1.5:
            best = (m.throughput, f"{variant.describe()} ({v_threads} ORT thread(s) each)")
    ctx.note(
        f"Recommendation for this machine ({ctx.machine.describe()}): "
        f"{best[1]} (best throughput at concurrency {top} without a p99 more than 1.5x the "
        "default's; the default is kept unless a variant beats it by more than 5%)."
    )
    served.use([])
    _low_load(ctx)


SCENARIO = Scenario(NUMBER, TITLE, run)
