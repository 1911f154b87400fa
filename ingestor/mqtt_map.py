"""How an MQTT message becomes a measurement of docs/PROTOCOL.md §3: the scale from its topic, the rest from its
JSON payload.

A plant's gateways publish one message per weighing on topics that name the
scale, such as ``plant/hall-2/scale/17/weight``. A :class:`TopicTemplate`
says where: ``plant/+/scale/{scale_id}/weight`` subscribes with the MQTT
filter ``plant/+/scale/+/weight`` and reads scale 17 from the fourth level
(a level may hold text around the placeholder: ``scale-{scale_id}``).
:class:`PayloadFields` names the payload's fields, dotted for nested objects
(``weight.value``).

When a payload has no sequence number (``seq = ""``), its time stands in:
``seq`` becomes ``ts`` in milliseconds since the epoch. A re-delivered
message then has the same key and is counted a duplicate, as it must; but
two weighings of one scale within the same millisecond are one measurement
(the second a duplicate), and the dedup state keeps a run per weighing
instead of one per scale (times are not consecutive numbers): one
``ingestor_claim_runs`` row, ~60 bytes, per stored event.

A message that cannot be mapped raises :class:`Unmappable` with a reason
naming what is wrong; the input keeps it as a dead letter with its topic.
The rules of §3 the mapping does not need (a time too far ahead, text too
long) are the front's, as for any sender.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import msgspec

from .errors import ConfigError

SCALE_ID_MAX = 2_147_483_647  # docs/PROTOCOL.md §3
MAX_DATA_FIELDS = 5
PLACEHOLDER = "{scale_id}"
_JSON = msgspec.json.Decoder()


class Unmappable(Exception):
    """A message that is not a measurement; ``str()`` says why, naming the topic or the field."""


class TopicTemplate:
    """A topic with one level holding ``{scale_id}``, MQTT's ``+`` and a final ``#`` allowed elsewhere.

    ConfigError naming the template when it has no placeholder or two, when
    ``#`` is not the last level, or when a level mixes a wildcard with text.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        levels = template.split("/")
        marked = [i for i, level in enumerate(levels) if PLACEHOLDER in level]
        if len(marked) != 1 or template.count(PLACEHOLDER) != 1:
            raise ConfigError(f"MQTT topic template {template!r} must hold {PLACEHOLDER} exactly once")
        for i, level in enumerate(levels):
            rest = level.replace(PLACEHOLDER, "")
            if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+") \
                    or "{" in rest or "}" in rest:
                raise ConfigError(f"MQTT topic template {template!r}: level {i + 1} ({level!r}) is not a name, "
                                  f"'+', a final '#' or a name around {PLACEHOLDER}")
        self._levels = levels
        self._at = marked[0]
        prefix, suffix = levels[self._at].split(PLACEHOLDER)
        self._scale = re.compile(re.escape(prefix) + "([0-9]+)" + re.escape(suffix))
        self.filter = "/".join("+" if i == self._at else level for i, level in enumerate(levels))  #: to subscribe

    def scale_of(self, topic: str) -> int:
        """The scale id ``topic`` names (1 … 2,147,483,647). Unmappable naming the topic when it does not match
        the template or its scale level is not such a number."""
        levels = topic.split("/")
        fixed = len(self._levels) - 1 if self._levels[-1] == "#" else len(self._levels)  # '#': any levels after
        if len(levels) < fixed or (fixed == len(self._levels) and len(levels) != fixed) or any(
                i != self._at and self._levels[i] not in ("+", levels[i]) for i in range(fixed)):
            raise Unmappable(f"topic {topic!r} does not match {self.template!r}")
        found = self._scale.fullmatch(levels[self._at])
        if found is None or not 1 <= int(found[1]) <= SCALE_ID_MAX:
            raise Unmappable(f"topic {topic!r}: level {self._at + 1} ({levels[self._at]!r}) does not hold a scale "
                             f"id 1 … {SCALE_ID_MAX} where {self.template!r} says {PLACEHOLDER}")
        return int(found[1])


class PayloadFields(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where a JSON payload holds each field of the measurement: a key, or a dotted path into nested objects."""

    ts: str = "ts"  #: epoch milliseconds or an RFC 3339 time, as in docs/PROTOCOL.md §3
    seq: str = "seq"  #: "": payloads carry no seq, and ``ts`` in milliseconds stands in (module doc)
    data: tuple[str, ...] = ("data_1", "data_2", "data_3", "data_4", "data_5")  #: data_1 … data_5, in order

    def __post_init__(self) -> None:
        if len(self.data) > MAX_DATA_FIELDS:
            raise ConfigError(f"MQTT payload fields: {len(self.data)} data fields, at most {MAX_DATA_FIELDS}")
        names = [self.ts, *([self.seq] if self.seq else []), *self.data]
        if any(not name or "" in name.split(".") for name in names):
            raise ConfigError(f"MQTT payload fields: an empty field name or path in {names!r}")


def measurement(scale_id: int, payload: bytes, fields: PayloadFields) -> dict[str, Any]:
    """The event of docs/PROTOCOL.md §3 a JSON ``payload`` holds for scale ``scale_id``.

    Unmappable naming the field when the payload is not a JSON object, the
    time or the seq is missing or not of its type, or a data field is not
    text, a number or null (a missing data field is null).
    """
    try:
        document = _JSON.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise Unmappable(f"payload is not JSON: {e}") from None
    if not isinstance(document, dict):
        raise Unmappable(f"payload is a JSON {type(document).__name__}, not an object")
    ts = _field(document, fields.ts, required=True)
    if isinstance(ts, bool) or not isinstance(ts, (int, str)):
        raise Unmappable(f"field {fields.ts!r} is {ts!r}: not epoch milliseconds or an RFC 3339 time")
    if fields.seq:
        seq = _field(document, fields.seq, required=True)
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise Unmappable(f"field {fields.seq!r} is {seq!r}: not an integer ≥ 0")
    else:
        seq = ts if isinstance(ts, int) else _milliseconds(ts, fields.ts)
    event: dict[str, Any] = {"scale_id": scale_id, "seq": seq, "ts": ts}
    for k, name in enumerate(fields.data, 1):
        value = _field(document, name, required=False)
        if isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))):
            raise Unmappable(f"field {name!r} is {value!r}: not text, a number or null")
        event[f"data_{k}"] = value
    return event


def _field(document: dict[str, Any], path: str, *, required: bool) -> Any:
    value: Any = document
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            if required:
                raise Unmappable(f"payload has no field {path!r}")
            return None
        value = value[key]
    return value


def _milliseconds(text: str, name: str) -> int:
    try:
        moment = msgspec.convert(text, dt.datetime)
    except msgspec.ValidationError:
        raise Unmappable(f"field {name!r} is {text!r}: not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise Unmappable(f"field {name!r} is {text!r}: an RFC 3339 time needs its offset (Z or ±hh:mm)")
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


class WeighingMetrics(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which Sparkplug B metrics of a scale's device make a measurement (ingestor/sparkplug.py).

    ``data[0]`` is the weighing: each value of it in an NDATA or DDATA
    message is one measurement, with its metric timestamp as ``ts``; the
    other data fields are the other metrics' values in the same message, or
    else their last values (births included: Sparkplug reports by exception).
    """

    data: tuple[str, ...] = ("Weight",)  #: metric names for data_1 … data_5, in order
    seq: str = ""  #: a metric counting the weighings; "": the weighing's timestamp in ms stands in (as for MQTT)

    def __post_init__(self) -> None:
        if not 1 <= len(self.data) <= MAX_DATA_FIELDS:
            raise ConfigError(f"Sparkplug weighing metrics: {len(self.data)} data metrics, 1 to {MAX_DATA_FIELDS}")
        if any(not name for name in self.data) or self.seq in self.data:
            raise ConfigError(f"Sparkplug weighing metrics: an empty name, or seq among the data, in {self.data!r}")
