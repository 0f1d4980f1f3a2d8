"""What every message's metadata may hold: one schema per message type the broker receives.

`qrl.protocol.wire` checks the envelope (header, dtypes, shapes, sizes); this module checks the
metadata inside it, before any broker handler or counter sees it. Every field has a type,
bounds and a length; integers stay within MAX_INT (what the broker can store in int64 arrays,
sum into counters and encode again, and what a JSON or JavaScript reader gets exactly);
floats are finite; free-form maps (env_kwargs, hyperparameters) are JSON-like, shallow and
small. A violation raises MessageError naming the field and the rule, never echoing the value
(a value can be a list nested a thousand deep). docs/protocol.md lists the same fields; a test
checks the two against each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MAX_INT = 2**53 - 1
"""The largest integer any field may hold."""
MAX_STR = 256
MAX_LIST = 4096
JSON_DEPTH = 4
JSON_ITEMS = 256


class MessageError(ValueError):
    """Metadata that breaks its message type's schema; ``reason`` is the counter it goes to."""

    def __init__(self, where: str, problem: str, reason: str = "bad_meta"):
        self.reason = reason
        self.detail = f"{where}: {problem}"
        super().__init__(self.detail)


@dataclass(frozen=True)
class Int:
    lo: int = 0
    hi: int = MAX_INT

    def check(self, value: Any, where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not self.lo <= value <= self.hi:
            raise MessageError(where, f"must be an integer in [{self.lo}, {self.hi}]")
        return value

    def describe(self) -> str:
        return f"int in [{_num(self.lo)}, {_num(self.hi)}]"


@dataclass(frozen=True)
class Float:
    lo: float = -math.inf
    hi: float = math.inf

    def check(self, value: Any, where: str) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                or not self.lo <= value <= self.hi:
            raise MessageError(where, f"must be a finite number in [{self.lo}, {self.hi}]")
        return float(value)

    def describe(self) -> str:  # (an integer is a number too: msgpack writers send 500 for 500.0)
        return "finite number" + ("" if math.isinf(self.lo) and math.isinf(self.hi) else f" in [{self.lo}, {self.hi}]")


@dataclass(frozen=True)
class Str:
    max_len: int = MAX_STR
    choices: tuple[str, ...] = ()

    def check(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not 0 < len(value) <= self.max_len:
            raise MessageError(where, f"must be a non-empty string of at most {self.max_len} characters")
        if self.choices and value not in self.choices:
            raise MessageError(where, f"must be one of {', '.join(self.choices)}")
        return value

    def describe(self) -> str:
        return f"one of {', '.join(self.choices)}" if self.choices else f"str, 1..{self.max_len} chars"


@dataclass(frozen=True)
class Bool:
    def check(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise MessageError(where, "must be true or false")
        return value

    def describe(self) -> str:
        return "bool"


@dataclass(frozen=True)
class List:
    item: Any
    max_len: int = MAX_LIST

    def check(self, value: Any, where: str) -> list:
        if not isinstance(value, list) or len(value) > self.max_len:
            raise MessageError(where, f"must be a list of at most {self.max_len} items")
        return [self.item.check(x, f"{where}[{i}]") for i, x in enumerate(value)]

    def describe(self) -> str:
        return f"list (at most {self.max_len}) of {self.item.describe()}"


@dataclass(frozen=True)
class Nullable:
    inner: Any

    def check(self, value: Any, where: str) -> Any:
        return None if value is None else self.inner.check(value, where)

    def describe(self) -> str:
        return f"{self.inner.describe()} or nil"


@dataclass(frozen=True)
class Counts:
    """A map of short string keys (1..key_len characters) to integers in [-1, 2^53-1]."""

    key_len: int
    max_entries: int

    def check(self, value: Any, where: str) -> dict[str, int]:
        if not isinstance(value, dict) or len(value) > self.max_entries:
            raise MessageError(where, f"must be a map of at most {self.max_entries} entries")
        for k, v in value.items():
            if not isinstance(k, str) or not 0 < len(k) <= self.key_len:
                raise MessageError(where, f"keys must be strings of 1..{self.key_len} characters")
            Int(-1, MAX_INT).check(v, f"{where}.{k}")
        return value

    def describe(self) -> str:
        return f"map (at most {self.max_entries}) of str (1..{self.key_len}) to int in [-1, 2^53-1]"


@dataclass(frozen=True)
class Json:
    """A free-form value (hyperparameters, env kwargs, wrapper options): nil, bool, int, finite
    float, str, list or string-keyed map, at most JSON_DEPTH deep and JSON_ITEMS entries per level.
    No bytes: everything the broker keeps must survive a JSON snapshot."""

    map_only: bool = False

    def check(self, value: Any, where: str) -> Any:
        if self.map_only and not isinstance(value, dict):
            raise MessageError(where, "must be a map")
        _check_json(value, where, JSON_DEPTH)
        return value

    def describe(self) -> str:
        return f"{'map' if self.map_only else 'value'} of JSON-like data (depth <= {JSON_DEPTH}, " \
               f"<= {JSON_ITEMS} entries per level)"


def _check_json(value: Any, where: str, depth: int) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        if len(value) > 4096:
            raise MessageError(where, "strings may hold at most 4096 characters")
        return
    if isinstance(value, int):
        Int(-MAX_INT, MAX_INT).check(value, where)
        return
    if isinstance(value, float):
        Float().check(value, where)
        return
    if depth <= 0:
        raise MessageError(where, f"nested deeper than {JSON_DEPTH} levels")
    if isinstance(value, list):
        if len(value) > JSON_ITEMS:
            raise MessageError(where, f"more than {JSON_ITEMS} items")
        for i, x in enumerate(value):
            _check_json(x, f"{where}[{i}]", depth - 1)
        return
    if isinstance(value, dict):
        if len(value) > JSON_ITEMS:
            raise MessageError(where, f"more than {JSON_ITEMS} entries")
        for k, x in value.items():
            if not isinstance(k, str) or not 0 < len(k) <= 64:
                raise MessageError(where, "keys must be strings of 1..64 characters")
            _check_json(x, f"{where}.{k}", depth - 1)
        return
    raise MessageError(where, "must be nil, bool, int, float, str, list or map (no bytes)")


@dataclass(frozen=True)
class Field:
    kind: Any
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class Map:
    fields: dict[str, Field] = field(default_factory=dict)

    def check(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise MessageError(where, "must be a map")
        unknown = [k for k in value if k not in self.fields]
        if unknown:
            name = unknown[0] if isinstance(unknown[0], str) else "(a non-string key)"
            raise MessageError(where, f"unknown field {name[:64]!r}; allowed: {', '.join(self.fields)}")
        out = {}
        for name, f in self.fields.items():
            path = f"{where}.{name}" if where else name
            if name in value:
                out[name] = f.kind.check(value[name], path)
            elif f.required:
                raise MessageError(path, "missing")
        return out

    def describe(self) -> str:
        return "map: " + ", ".join(self.fields)


def _num(x: int) -> str:
    return "2^53-1" if x == MAX_INT else "-(2^53-1)" if x == -MAX_INT else str(x)


# -- the schemas ------------------------------------------------------------------------------

REQ = Field(Int(-MAX_INT, MAX_INT), required=False, doc="request id, echoed in the reply")
RUN_ID = Str(64)
MAX_ACTORS_CONSUMED = 1024
"""Incarnations a weights message reports on (the learner keeps the most recently consumed)."""
TOKEN = Str(128)
HOLDER_TOKEN = Field(TOKEN, required=False, doc="the run's token (without keys only the run's learner may ask)")

SPEC = Map({
    "run_id": Field(RUN_ID, doc="the run's id"),
    "algo": Field(Str(64), doc="algorithm name (an actor loads only algorithms it has installed)"),
    "env": Field(Str(), doc="environment id"),
    "env_kwargs": Field(Nullable(Json(map_only=True)), required=False, doc="keyword arguments of the env"),
    "wrappers": Field(Nullable(List(Json(), max_len=32)), required=False, doc="gymnasium wrappers by name"),
    "args": Field(Json(map_only=True), doc="the algorithm's hyperparameters"),
    "run": Field(Map({
        "num_envs": Field(Int(1, 4096)),
        "segment_length": Field(Int(1, 1 << 20)),
        "seed": Field(Int(-MAX_INT, MAX_INT)),
        "sync_actors": Field(Bool(), required=False),
        "sync_lead": Field(Int(0, 64), required=False),
        "frame_fields": Field(List(Str(128), max_len=64), required=False,
                              doc="item fields an actor sends as frame references (the schema's frames.fields)"),
        "frame_links": Field(Bool(), required=False,
                             doc="references may link to the stream's previous segment (a replay table of frames)"),
        "clip_rewards": Field(Bool(), required=False, doc="actors put each reward's sign in the items"),
        "episodic_life": Field(Bool(), required=False,
                               doc="actors mark a step that lost a life (info['lives'] fell) terminated in the items"),
        "value_limit": Field(Float(0), required=False,
                             doc="the largest magnitude of a value the broker stores where the spaces give no "
                                 "tighter bound (the schema's limits come from it)"),
    }), doc="num_envs, segment_length, seed, sync_actors, sync_lead, frame_fields, frame_links, clip_rewards, "
            "episodic_life, value_limit"),
})

TABLE = Map({
    "capacity": Field(Int(1, 1 << 40)),
    "sampler": Field(Str(16, ("uniform", "prioritized", "fifo"))),
    "min_size": Field(Int(0, 1 << 40), required=False),
    "samples_per_insert": Field(Float(0, 1e6), required=False),
    "tolerance": Field(Float(0, 1e15), required=False),
    "priority_exponent": Field(Float(0, 10), required=False),
    "max_policy_lag": Field(Nullable(Int(0, MAX_INT)), required=False),
    "max_segment_items": Field(Nullable(Int(1, 1 << 40)), required=False,
                               doc="items one segment may bring at most (nil: 1/16 of a replay table but at least "
                                   "1024, a queue's capacity)"),
})

FRAMES = Map({
    "dtype": Field(Str(8), doc="the frames' dtype (a wire dtype)"),
    "shape": Field(List(Int(1, 1 << 16), max_len=7), doc="one frame's shape"),
    "fields": Field(List(Str(128), max_len=64), doc="the item fields that are int32 references into a segment's pool"),
    "per_item": Field(Float(0, 1 << 16), doc="pool frames per item; the table's frame ring holds capacity x this"),
})

ITEM_SCHEMA = Map({
    "fields": Field(Json(map_only=True), doc="field name -> [dtype, trailing shape]"),
    "frames_per_item": Field(Int(1, 1 << 20), doc="env frames each item covers"),
    "frames": Field(FRAMES, required=False, doc="set: each frame stored once (docs/frames.md)"),
    "limits": Field(Json(map_only=True), required=False,
                    doc="field -> [lo, hi]: a segment with a value of that field outside is refused (out_of_bounds)"),
    "return_limit": Field(Float(0), required=False,
                          doc="a segment's episode_returns lie within +-this (refused: out_of_bounds)"),
})

SCHEMAS: dict[str, Map] = {
    "segment": Map({
        "run_id": Field(RUN_ID, doc="the registered run's id; segments of any other run are rejected"),
        "actor_id": Field(Int(), doc="the actor's id"),
        "incarnation": Field(Str(64), doc="random per worker process start"),
        "seq": Field(Int(), doc="per-incarnation sequence number, from 0"),
        "policy_version": Field(Int(-1, MAX_INT), doc="version of the weights that acted"),
        "frames": Field(Int(), doc="env steps the segment's items cover: exactly items x the schema's frames_per_item"),
        "episode_returns": Field(List(Float()), required=False, doc="returns of episodes finished in it"),
        "episode_lengths": Field(List(Int()), required=False, doc="their lengths (as many)"),
    }),
    "register": Map({
        "req": REQ,
        "spec": Field(SPEC, doc="the run spec"),
        "table": Field(TABLE, doc="the table configuration"),
        "schema": Field(ITEM_SCHEMA, doc="the item schema"),
        "weights_version": Field(Int(-1, MAX_INT), doc="version of the initial weights"),
        "token": Field(TOKEN, doc="the learner's secret for this run"),
        "takeover_token": Field(TOKEN, required=False,
                                doc="the token of the run the broker holds: registers another run while its "
                                    "learner is alive (docs/protocol.md, \"Run ownership\")"),
        "frames_left": Field(Int(0, MAX_INT), required=False,
                             doc="env frames the run may still take: the broker stores no segment once it has "
                                 "accepted this many more (the frame budget, overshot by one segment at most)"),
    }),
    "get_spec": Map({"req": REQ}),
    "get_weights": Map({"req": REQ}),
    "sample": Map({
        "req": REQ,
        "token": HOLDER_TOKEN,
        "batch_size": Field(Int(0, 1 << 24), doc="items wanted (at most the table's capacity; 0 with demo_batch: "
                                                   "demonstrations alone)"),
        "beta": Field(Float(0, 1), required=False, doc="importance-sampling exponent, default 1"),
        "demo_batch": Field(Int(0, 1 << 24), required=False,
                            doc="demonstration items wanted beside them, from the run's demonstration table "
                                "(fields prefixed demo.)"),
    }),
    "demos": Map({
        "req": REQ,
        "token": HOLDER_TOKEN,
        "offset": Field(Int(0, 1 << 40), doc="the first item's index: 0 starts a new demonstration table, "
                                             "each next part follows the last"),
        "total": Field(Int(1, 1 << 40), doc="the items the whole table holds"),
        "schema": Field(ITEM_SCHEMA, required=False, doc="the items' schema (with offset 0)"),
    }),
    "update_priorities": Map({"req": REQ, "token": HOLDER_TOKEN}),
    "sample_status": Map({"req": REQ, "token": HOLDER_TOKEN}),
    "release": Map({"req": REQ, "token": HOLDER_TOKEN}),
    "get_stats": Map({
        "req": REQ,
        "actor": Field(Int(), required=False, doc="with incarnation: that incarnation's last seq"),
        "incarnation": Field(Str(64), required=False, doc="see actor"),
        "actors_from": Field(Int(), required=False, doc="per_actor page: ids from this one"),
        "actors_limit": Field(Int(1, 1000), required=False, doc="per_actor page size"),
    }),
    "flush": Map({
        "req": REQ,
        "actor_id": Field(Int()),
        "incarnation": Field(Str(64)),
        "last_seq": Field(Int()),
    }),
    "claim_ids": Map({"req": REQ, "n": Field(Int(1, 4096), doc="how many ids")}),
    "credit": Map({
        "req": REQ,
        "run_id": Field(RUN_ID, doc="the run the segment is for; another run's is refused (wrong_run)"),
        "actor_id": Field(Int(), doc="the actor's id, as its segments carry it"),
        "incarnation": Field(Str(64), doc="as its segments carry it"),
        "seq": Field(Int(), doc="the seq of the segment the actor is about to collect: granted when the reply's "
                                "until is at least this (docs/protocol.md, \"Flow control\")"),
    }),
    "actor_error": Map({
        "req": REQ,
        "actor_id": Field(Int(-1, MAX_INT), doc="the actor's id; -1: a central inference server"),
        "reason": Field(Str(32, ("refused_spec", "env_error")), doc="what went wrong"),
        "detail": Field(Str(512), doc="the actor's one-line error"),
    }),
    "weights": Map({
        "version": Field(Int(0, MAX_INT), doc="above the last one, by at most MAX_VERSION_STEP"),
        "run_id": Field(RUN_ID),
        "token": Field(TOKEN, required=False, doc="the run's token (learner to broker only; stripped on the way out)"),
        "consumed": Field(Counts(64, MAX_ACTORS_CONSUMED), required=False,
                          doc="sync_actors runs: incarnation -> the last seq this version's learner is done with "
                              "(trained on, or dropped by the broker); forwarded to actors"),
    }),
}


ENV_ACTOR = {
    "req": REQ,
    "actor_id": Field(Int(), doc="the env actor's id"),
    "incarnation": Field(Str(32), doc="random per env actor process start"),
}
STREAM_TOKEN = Field(TOKEN, doc="the secret the server gave this stream in env_config")

INFERENCE_SCHEMAS: dict[str, Map] = {
    "env_hello": Map({
        **ENV_ACTOR,
        "num_envs": Field(Int(1, 4096), required=False, doc="environments this actor steps (default: the run's)"),
        "resume": Field(Bool(), required=False,
                        doc="true when this actor's episodes are under way (after a timeout: a new server)"),
        "token": Field(TOKEN, required=False,
                       doc="the stream's token, when greeting again a server that still has it (it is replaced)"),
    }),
    "env_step": Map({
        **ENV_ACTOR,
        "token": STREAM_TOKEN,
        "step": Field(Int(), doc="0 after each hello, then +1 per request; a resent request repeats it"),
    }),
    "env_bye": Map({**ENV_ACTOR, "token": STREAM_TOKEN}),
    "get_stats": Map({"req": REQ}),
}
"""What the inference server's ROUTER accepts from env-only actors (docs/protocol.md)."""


def validate(msg_type: str, meta: Any, schemas: dict[str, Map] = SCHEMAS, server: str = "the broker") -> dict[str, Any]:
    """The metadata of a message a server received, checked against its type's schema."""
    schema = schemas.get(msg_type)
    if schema is None:
        raise MessageError("t", f"{msg_type} is not a message {server} accepts", reason="unexpected_type")
    return schema.check(meta, msg_type)


def markdown(schemas: dict[str, Map] | None = None) -> str:
    """The metadata tables of docs/protocol.md (checked equal by a test): the broker's messages,
    or those of the given schemas alone."""
    lines = ["| message | field | type | required | meaning |", "|---|---|---|---|---|"]
    for msg_type, schema in (schemas or SCHEMAS).items():
        for name, f in schema.fields.items():
            required = "yes" if f.required else "no"
            lines.append(f"| `{msg_type}` | `{name}` | {f.kind.describe()} | {required} | {f.doc} |")
    if schemas is not None:
        return "\n".join(lines)
    maps = (("spec", SPEC), ("table", TABLE), ("schema", ITEM_SCHEMA), ("schema.frames", FRAMES),
            ("spec.run", SPEC.fields["run"].kind))
    for title, sub in maps:
        lines += ["", f"`{title}`:", "", "| field | type | required | meaning |", "|---|---|---|---|"]
        for name, f in sub.fields.items():
            lines.append(f"| `{name}` | {f.kind.describe()} | {'yes' if f.required else 'no'} | {f.doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
    print()
    print(markdown(INFERENCE_SCHEMAS))
