"""The shared validators: values in range pass through, others fail naming the value and
what is allowed."""

import math

import pytest

from nncompress.checks import check_choice, check_float, check_fraction, check_int, interval
from nncompress.errors import ConfigError


def test_values_in_range_pass_through_converted():
    assert check_int(3, "steps", 1) == 3 and check_int(4.0, "rank", 1, 5) == 4
    assert check_float(2, "lr", 0, lo_open=True) == 2.0 and isinstance(check_float(2, "lr"), float)
    assert check_fraction(1, "energy") == 1.0 and check_fraction(0, "target", zero=True, one=False) == 0.0
    assert check_choice("layer", ("layer", "global"), "scope") == "layer"
    assert interval(0, 1, hi_open=True) == "[0, 1)" and interval(None, 5) == "<= 5"


@pytest.mark.parametrize("call, message", [
    (lambda: check_int(0, "steps", 1), "steps must be an integer >= 1, got 0"),
    (lambda: check_int(2.5, "steps", 1), "steps must be an integer >= 1, got 2.5"),
    (lambda: check_int(True, "steps", 1), "steps must be an integer >= 1, got True"),
    (lambda: check_int("3", "n", 1, 9), r"n must be an integer in \[1, 9\], got '3'"),
    (lambda: check_float(-1e-3, "eps", 0), "eps must be >= 0, got -0.001"),
    (lambda: check_float(math.nan, "lr", 0, lo_open=True), "lr must be > 0, got nan"),
    (lambda: check_float("x", "lr", 0), "lr must be a number >= 0, got 'x'"),
    (lambda: check_fraction(0, "energy"), r"energy must be in \(0, 1\], got 0"),
    (lambda: check_fraction(1.0, "target", zero=True, one=False), r"target must be in \[0, 1\), got 1.0"),
    (lambda: check_choice("all", ("layer", "global"), "scope"), "scope='all' not allowed; allowed: layer, global"),
    (lambda: check_choice(["a"], ("a",), "kind"), r"kind=\['a'\] not allowed"),
])
def test_values_out_of_range_name_the_value_and_the_range(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
