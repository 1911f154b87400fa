"""How an MQTT message becomes a measurement (ingestor/mqtt_map.py): tried mostly on what it must refuse, every
template rule, every field, and a property test that a template reads back the scale of every topic it matches
and of no topic a level differs from."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestor.errors import ConfigError
from ingestor.mqtt_map import SCALE_ID_MAX, PayloadFields, TopicTemplate, Unmappable, measurement
from ingestor.protocol import Event

TS = 1_764_064_800_000


@pytest.mark.parametrize(("template", "subscribes"), [
    ("plant/+/scale/{scale_id}/weight", "plant/+/scale/+/weight"),
    ("{scale_id}", "+"),
    ("scales/scale-{scale_id}", "scales/+"),
    ("scales/{scale_id}.kg/#", "scales/+/#"),
    ("a/{scale_id}/#", "a/+/#"),
])
def test_a_template_subscribes_with_its_placeholder_as_a_single_level_wildcard(template, subscribes):
    assert TopicTemplate(template).filter == subscribes


@pytest.mark.parametrize("template", [
    "", "plant/scale/weight", "a/{scale_id}/{scale_id}", "a/{scale_id}{scale_id}", "#/{scale_id}",
    "a/#/{scale_id}", "a/{scale_id}/#/b", "a/b#/{scale_id}", "a/+x/{scale_id}", "a/{scale_id}+", "a/{scale_id}#",
    "a/{scale_id}}", "a/{{scale_id}", "a/{scale}/{scale_id}", "{scale_id}/x#",
])
def test_a_template_that_is_not_one_placeholder_among_names_and_wildcards_is_refused_naming_it(template):
    with pytest.raises(ConfigError, match="MQTT topic template"):
        TopicTemplate(template)


@pytest.mark.parametrize(("template", "topic", "scale"), [
    ("plant/+/scale/{scale_id}/weight", "plant/hall-2/scale/17/weight", 17),
    ("plant/+/scale/{scale_id}/weight", "plant//scale/17/weight", 17),  # '+' matches an empty level too
    ("scales/scale-{scale_id}", "scales/scale-2147483647", SCALE_ID_MAX),
    ("scales/{scale_id}.kg/#", "scales/5.kg", 5),  # '#' matches the parent level too
    ("scales/{scale_id}.kg/#", "scales/5.kg/a/b/c", 5),
    ("{scale_id}", "007", 7),
])
def test_the_scale_is_read_from_the_placeholder_s_level(template, topic, scale):
    assert TopicTemplate(template).scale_of(topic) == scale


@pytest.mark.parametrize(("template", "topic"), [
    ("plant/+/scale/{scale_id}/weight", "plant/hall-2/scale/17"),  # a level short
    ("plant/+/scale/{scale_id}/weight", "plant/hall-2/scale/17/weight/x"),  # a level over
    ("plant/+/scale/{scale_id}/weight", "plant/hall-2/scales/17/weight"),  # a name differs
    ("plant/+/scale/{scale_id}/weight", "plant/hall-2/scale/x17/weight"),
    ("plant/+/scale/{scale_id}/weight", "plant/hall-2/scale//weight"),
    ("plant/+/scale/{scale_id}/weight", "plant/hall-2/scale/0/weight"),
    ("plant/+/scale/{scale_id}/weight", "plant/hall-2/scale/-5/weight"),
    ("plant/+/scale/{scale_id}/weight", "plant/hall-2/scale/2147483648/weight"),
    ("plant/+/scale/{scale_id}/weight", "plant/hall-2/scale/1.5/weight"),
    ("plant/+/scale/{scale_id}/weight", "plant/hall-2/scale/١٢/weight"),  # Arabic-Indic digits
    ("plant/+/scale/{scale_id}/weight", "plant/hall-2/scale/ 17/weight"),
    ("scales/scale-{scale_id}", "scales/17"),
    ("scales/scale-{scale_id}", "scales/scale-"),
    ("scales/{scale_id}.kg/#", "scales/5"),
    ("scales/{scale_id}.kg/#", "other/5.kg/a"),
])
def test_a_topic_that_does_not_name_a_scale_where_the_template_says_is_unmappable_naming_it(template, topic):
    with pytest.raises(Unmappable, match="topic "):
        TopicTemplate(template).scale_of(topic)


level = st.text(alphabet=st.characters(blacklist_characters="/+#{}", blacklist_categories=("Cs",)), max_size=8)


@given(names=st.lists(level, min_size=0, max_size=4), at=st.integers(0, 4), scale=st.integers(1, SCALE_ID_MAX),
       prefix=level.filter(lambda s: not s[-1:].isdigit()), wild=st.lists(st.booleans(), min_size=5, max_size=5),
       other=level)
def test_every_topic_a_template_matches_gives_its_scale_and_a_changed_name_level_gives_none(
        names, at, scale, prefix, wild, other):
    at = min(at, len(names))
    levels = [("+" if w else n) for n, w in zip(names, wild)]
    template = TopicTemplate("/".join([*levels[:at], prefix + "{scale_id}", *levels[at:]]))
    topic_levels = [other if lvl == "+" else lvl for lvl in levels]
    topic = [*topic_levels[:at], f"{prefix}{scale}", *topic_levels[at:]]
    assert template.scale_of("/".join(topic)) == scale
    for i, lvl in enumerate(levels):
        if lvl != "+" and lvl + "x" != lvl:
            changed = [*topic_levels]
            changed[i] = lvl + "x"
            with pytest.raises(Unmappable):
                template.scale_of("/".join([*changed[:at], f"{prefix}{scale}", *changed[at:]]))


def payload(**fields) -> bytes:
    return msgspec.json.encode(fields)


def test_a_payload_of_the_protocol_s_fields_maps_to_the_event_the_front_accepts():
    event = measurement(17, payload(seq=4, ts=TS, data_1="12.5 kg", data_2=3, data_3=1.25), PayloadFields())
    assert event == {"scale_id": 17, "seq": 4, "ts": TS, "data_1": "12.5 kg", "data_2": 3, "data_3": 1.25,
                     "data_4": None, "data_5": None}
    assert msgspec.convert(event, Event).scale_id == 17


def test_fields_may_be_named_and_nested_and_fewer_than_five():
    fields = PayloadFields(ts="t", seq="meta.n", data=("weight.value", "weight.unit"))
    event = measurement(3, payload(t="2026-11-25T10:00:00Z", meta={"n": 9}, weight={"value": 12.5, "unit": "kg"}),
                        fields)
    assert event == {"scale_id": 3, "seq": 9, "ts": "2026-11-25T10:00:00Z", "data_1": 12.5, "data_2": "kg"}


@pytest.mark.parametrize(("ts", "seq"), [(TS, TS), ("2025-11-25T10:00:00.123Z", TS + 123),
                                         ("2025-11-25T12:00:00.123+02:00", TS + 123),
                                         ("2025-11-25T10:00:00.123999Z", TS + 123)])
def test_without_a_seq_the_time_in_milliseconds_stands_in(ts, seq):
    assert dt.datetime.fromtimestamp(TS / 1000, dt.UTC) == dt.datetime(2025, 11, 25, 10, tzinfo=dt.UTC)
    event = measurement(1, payload(ts=ts, data_1="1 kg"), PayloadFields(seq=""))
    assert (event["seq"], event["ts"]) == (seq, ts)


@pytest.mark.parametrize(("body", "why"), [
    (b"", "not JSON"), (b"{", "not JSON"), (b"\xff", "not JSON"), (b"12.5", "not an object"),
    (b"[1]", "not an object"), (b'"12.5 kg"', "not an object"), (b"null", "not an object"),
    (payload(seq=1), "no field 'ts'"), (payload(ts=TS), "no field 'seq'"),
    (payload(seq=1, ts=None), "not epoch milliseconds"), (payload(seq=1, ts=True), "not epoch milliseconds"),
    (payload(seq=1, ts=1.5), "not epoch milliseconds"), (payload(seq=1, ts={"ms": TS}), "not epoch milliseconds"),
    (payload(seq="1", ts=TS), "not an integer"), (payload(seq=-1, ts=TS), "not an integer"),
    (payload(seq=1.0, ts=TS), "not an integer"), (payload(seq=False, ts=TS), "not an integer"),
    (payload(seq=1, ts=TS, data_1={"v": 1}), "field 'data_1'"), (payload(seq=1, ts=TS, data_2=[1]), "field 'data_2'"),
    (payload(seq=1, ts=TS, data_5=True), "field 'data_5'"),
])
def test_a_payload_that_is_not_a_measurement_is_unmappable_naming_the_field(body, why):
    with pytest.raises(Unmappable, match=why):
        measurement(1, body, PayloadFields())


@pytest.mark.parametrize(("ts", "why"), [("yesterday", "not an RFC 3339 time"), ("2025-11-25T10:00:00", "offset"),
                                         ("", "not an RFC 3339 time")])
def test_without_a_seq_a_time_that_cannot_be_a_number_is_unmappable(ts, why):
    with pytest.raises(Unmappable, match=why):
        measurement(1, payload(ts=ts), PayloadFields(seq=""))


def test_a_nested_path_through_a_value_that_is_not_an_object_is_a_missing_field():
    with pytest.raises(Unmappable, match="no field 'meta.n'"):
        measurement(1, payload(ts=TS, meta=5), PayloadFields(seq="meta.n"))


@pytest.mark.parametrize("fields", [{"data": ("a", "b", "c", "d", "e", "f")}, {"ts": ""}, {"seq": "a..b"},
                                    {"data": ("x.",)}])
def test_field_names_beyond_five_data_fields_or_empty_are_refused(fields):
    with pytest.raises(ConfigError, match="MQTT payload fields"):
        PayloadFields(**fields)


def test_the_payload_fields_come_from_a_configuration_table_with_no_unknown_key():
    assert msgspec.convert({"ts": "t", "seq": ""}, PayloadFields) == PayloadFields(ts="t", seq="")
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"time": "t"}, PayloadFields)
