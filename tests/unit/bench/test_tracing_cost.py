"""bench/tracing_cost.py's summary: each cost is the median of the rounds' paired differences."""

from bench.tracing_cost import NOT_SAMPLED, SAMPLED, summary


def test_each_cost_is_the_median_of_the_rounds_differences_not_a_difference_of_medians():
    windows = {"off": [100.0, 900.0, 300.0], "on": [150.0, 960.0, 330.0], "on_not_sampled": [110.0, 890.0, 310.0]}
    result = summary(windows)
    assert (result["off_us"], result["on_us"], result["on_not_sampled_us"]) == (300.0, 330.0, 310.0)
    assert result["on_cost_us"] == 50.0  # the differences are 50, 60 and 30; the medians' difference is 30
    assert result["not_sampled_cost_us"] == 10.0  # 10, -10 and 10
    assert len(result["on_cost_quartiles_us"]) == 3


def test_the_clients_trace_context_differs_only_in_its_sampled_flag():
    assert SAMPLED[0] == NOT_SAMPLED[0] == b"traceparent"
    assert SAMPLED[1].endswith(b"-01") and NOT_SAMPLED[1] == SAMPLED[1][:-2] + b"00"
