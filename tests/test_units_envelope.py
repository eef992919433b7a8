"""Envelope parsing: good input, bad input, and the one-line messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.envelope import Envelope, EnvelopeError
from engine.units import UnitError, format_duration, format_size, parse_duration, parse_size

G = 1 << 30


@pytest.mark.parametrize(
    "text, expected",
    [
        ("512M", 512 << 20), ("16G", 16 * G), ("16GiB", 16 * G), ("16g", 16 * G), ("1.5T", int(1.5 * (1 << 40))),
        ("16GB", 16 * 10**9), ("100K", 100 << 10), ("0", 0), (" 2G ", 2 * G), ("1024", None), ("1.5", None),
    ],
)
def test_parse_size(text, expected):
    if expected is None:
        with pytest.raises(UnitError, match="has no unit"):
            parse_size(text)
    else:
        assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "G", "16X", "-1G", "1e3G", "16 G B"])
def test_parse_size_rejects(text):
    with pytest.raises(UnitError) as error:
        parse_size(text)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90s", 90), ("45m", 2700), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("1:30:00", 5400),
        ("30:00", 1800), ("2-00:00:00", 172800), ("0.5h", 1800), ("1w", 604800), ("1H", 3600),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, hint", [
    ("90", "has no unit"), ("soon", "cannot read duration"), ("1:75:00", "below 60"), ("", "empty duration"),
    ("2h and", "cannot read"), ("x-01:00:00", "cannot read"), ("1:2:3:4", "cannot read"),
])
def test_parse_duration_rejects(text, hint):
    with pytest.raises(UnitError, match=hint):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=1 << 50))
def test_format_size_reads_back_close(num_bytes):
    text = format_size(num_bytes)
    if text.endswith("B"):
        assert text == f"{num_bytes}B"
    else:
        assert abs(parse_size(text) - num_bytes) <= 0.05 * num_bytes + 1


@given(st.integers(min_value=1, max_value=10 * 86400))
def test_format_duration_reads_back(seconds):
    assert parse_duration(format_duration(seconds)) <= seconds


def test_envelope_defaults_fit_a_small_cpu_job():
    envelope = Envelope()
    assert envelope.cpus == 1 and envelope.mem_bytes == G and envelope.gpus == 0
    assert envelope.time_limit_s is None and not envelope.exclusive_gpus


def test_envelope_parse_and_describe():
    envelope = Envelope.parse(cpus="0.5", mem="16G", gpus="2", gpu_mem="10G", time="2h", disk="20G")
    assert envelope == Envelope(cpus=0.5, mem_bytes=16 * G, gpus=2, gpu_mem_bytes=10 * G, time_limit_s=7200,
                                disk_bytes=20 * G)
    assert envelope.describe() == "0.5 CPU, 16G, 2 GPUs x 10G, 20G disk, 2h"
    assert Envelope.from_dict(envelope.to_dict()) == envelope
    assert Envelope.parse(gpus="4").exclusive_gpus


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cpus": "two"}, "--cpus must be a number"),
        ({"cpus": "0"}, "--cpus must be a positive number"),
        ({"cpus": "nan"}, "--cpus must be a positive number"),
        ({"gpus": "1.5"}, "--gpus must be a whole number"),
        ({"gpus": "-1"}, "--gpus must be a whole number"),
        ({"gpu_mem": "10G"}, "--gpu-mem needs --gpus"),
        ({"gpus": "1", "gpu_mem": "0"}, "--gpu-mem must be more than 0"),
        ({"mem": "16"}, "has no unit"),
        ({"time": "0s"}, "--time must be longer than 0s"),
        ({"time": "forever"}, "cannot read duration"),
    ],
)
def test_envelope_rejects_with_one_line(kwargs, message):
    with pytest.raises(EnvelopeError) as error:
        Envelope.parse(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)
