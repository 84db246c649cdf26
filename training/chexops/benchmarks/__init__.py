


def timed_calls(once, runs: int, warmup: int) -> list[float]:
    """Seconds of each of `runs` sequential calls of `once`, after `warmup` untimed ones."""
    import time

    for _ in range(warmup):
        once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return times
