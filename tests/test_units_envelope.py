"""Envelope parsing: good input, bad input, and the one-line messages."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.envelope import RESOURCE_NAME_RE, Envelope, EnvelopeError
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


# --- named counted resources ------------------------------------------------------------------


def test_res_items_parse_sorted_with_a_default_count_of_one():
    envelope = Envelope.parse(res=["nfs_io=2", "licence", " db.main = 3 "], time="2h")
    assert envelope.resources == (("db.main", 3), ("licence", 1), ("nfs_io", 2))
    assert envelope.describe() == "1 CPU, 1G, 2h, db.main=3, licence=1, nfs_io=2"
    assert Envelope.parse(res=[]).resources == () == Envelope().resources
    assert Envelope.parse(res=None) == Envelope()


def test_res_as_one_string_splits_on_commas_and_spaces():
    assert Envelope.parse(res="nfs_io=2, licence  db=1,").resources == (("db", 1), ("licence", 1), ("nfs_io", 2))
    assert Envelope.parse(res="  ").resources == ()


def test_resources_serialise_as_a_plain_dict_in_name_order():
    envelope = Envelope(resources=(("nfs_io", 1), ("licence", 2)))
    data = envelope.to_dict()
    assert data["resources"] == {"licence": 2, "nfs_io": 1}
    assert list(data["resources"]) == ["licence", "nfs_io"]
    assert Envelope.from_dict(json.loads(json.dumps(data))) == envelope
    assert Envelope().to_dict()["resources"] == {}


def test_from_dict_without_resources_asks_for_none():
    old_row = {"cpus": 2.0, "mem_bytes": G, "gpus": 0, "gpu_mem_bytes": None, "disk_bytes": 0, "time_limit_s": None}
    assert Envelope.from_dict(old_row).resources == ()
    assert Envelope.from_dict({"resources": None}).resources == ()


def test_equal_requests_hash_equal_whatever_order_they_came_in():
    given_order = Envelope(resources={"nfs_io": 1, "licence": 2})
    other_order = Envelope(resources=[("licence", 2), ("nfs_io", 1)])
    assert given_order == other_order
    assert len({given_order, other_order, Envelope()}) == 2


@pytest.mark.parametrize("item", ["x=y", "=1", "nfs_io=0", "nfs_io=-1", "nfs_io=1.5", "nfs io=1", "1st=1", "a=b=1", ""])
def test_bad_res_items_get_the_one_line_hint(item):
    with pytest.raises(EnvelopeError) as error:
        Envelope.parse(res=[item])
    assert str(error.value) == f"--res {item!r}: write NAME=COUNT, e.g. --res nfs_io=1"


def test_a_res_name_given_twice_is_refused_not_summed():
    with pytest.raises(EnvelopeError) as error:
        Envelope.parse(res=["nfs_io=1", "licence", "nfs_io=2"])
    assert str(error.value) == "--res nfs_io is given twice: give it once with the total, e.g. --res nfs_io=2"


@pytest.mark.parametrize(
    "resources, message",
    [
        ("nfs_io", "resources must map names to counts"),
        (7, "resources must map names to counts"),
        ({"nfs_io": 0}, "--res nfs_io=0: the count must be a whole number of 1 or more"),
        ({"nfs_io": 1.5}, "--res nfs_io=1.5: the count must be a whole number of 1 or more"),
        ({"nfs_io": True}, "the count must be a whole number"),
        ({"nfs io": 1}, "a resource name starts with a letter or _"),
        ([["nfs_io", 1], ["nfs_io", 1]], "--res nfs_io is given twice"),
        ([["nfs_io"]], "resources must be (name, count) pairs"),
    ],
)
def test_decoded_requests_with_bad_resources_are_refused_in_one_line(resources, message):
    with pytest.raises(EnvelopeError) as error:
        Envelope.from_dict({"resources": resources})
    assert message in str(error.value) and "\n" not in str(error.value)


@given(st.dictionaries(st.from_regex(RESOURCE_NAME_RE, fullmatch=True), st.integers(1, 10_000), max_size=5))
def test_resources_round_trip_through_json_and_the_cli_form(counts):
    envelope = Envelope(resources=counts)
    assert [name for name, _ in envelope.resources] == sorted(counts)
    assert Envelope.from_dict(json.loads(json.dumps(envelope.to_dict()))) == envelope
    assert Envelope.parse(res=[f"{name}={count}" for name, count in counts.items()]) == envelope
    assert Envelope.parse(res=" ".join(item for item in envelope.describe().split(", ") if "=" in item)) == envelope
