"""Traffic split: configured percentages, stickiness, reproducibility across processes."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np

from lakeserve.scoring.routing import Router, bucket, key_string
from lakeserve.scoring.settings import Route, TrafficConfig


def traffic(*split: tuple[str, int], shadow: str | None = None) -> TrafficConfig:
    routes = [Route(served_model_name=n, traffic_percentage=p) for n, p in split]
    return TrafficConfig(routes=routes, shadow_model_name=shadow)


def test_observed_split_is_within_two_points_over_10000_keys() -> None:
    router = Router(traffic(("a", 70), ("b", 20), ("c", 10)))
    counts = Counter(router.assign([f"customer-{i}" for i in range(10_000)]))
    for name, share in {"a": 70, "b": 20, "c": 10}.items():
        assert abs(counts[name] / 100 - share) <= 2, counts


def test_assignment_is_sticky_and_zero_routes_get_nothing() -> None:
    router = Router(traffic(("a", 0), ("b", 50), ("c", 50)))
    keys = [str(i) for i in range(2_000)]
    first = router.assign(keys)
    assert first == router.assign(keys)
    assert first == [router.route(k) for k in keys]
    assert "a" not in first


def test_shifting_traffic_moves_only_the_shifted_buckets() -> None:
    keys = [str(i) for i in range(5_000)]
    before = Router(traffic(("v2", 80), ("v3", 20))).assign(keys)
    after = Router(traffic(("v2", 50), ("v3", 50))).assign(keys)
    assert all(a == "v3" for b, a in zip(before, after, strict=True) if b == "v3")
    moved = sum(b != a for b, a in zip(before, after, strict=True))
    assert 0.27 < moved / len(keys) < 0.33


def test_buckets_are_the_same_in_another_process() -> None:
    keys = ["alice", "bob", "42", "customer-7", "ünïcode"]
    code = "import sys; from lakeserve.scoring.routing import bucket; print([bucket(k) for k in sys.argv[1:]])"
    env = {"PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, *keys], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == str([bucket(k) for k in keys])


def test_key_strings_of_equal_numbers_agree() -> None:
    assert key_string(42) == key_string(42.0) == key_string(np.int64(42)) == "42"
    assert key_string(None) is None
    assert key_string(float("nan")) is None
    assert key_string("abc") == "abc"


def test_shadow_copies_every_record_it_does_not_answer() -> None:
    router = Router(traffic(("a", 50), ("b", 50), shadow="b"))
    assert router.shadow == "b"
    assert router.shadows(["a", "b", "a"]) == [True, False, True]
    assert Router(traffic(("a", 100))).shadows(["a"]) == [False]


def test_bucket_range() -> None:
    assert {bucket(str(i)) for i in range(3_000)} == set(range(100))
