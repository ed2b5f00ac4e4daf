"""Parse an Envoy v3 bootstrap (YAML) into Envoy's own protos; print it as JSON or name the fault.

Usage: .venv-xds/bin/python scripts/envoy_check.py CONFIG

Runs in its own environment (``python3 -m venv .venv-xds && .venv-xds/bin/pip install
xds-protos pyyaml``): xds-protos overwrites protos the main one needs (../shared/ENVIRONMENT.md).

What is checked, each fault reported with the field's path and exit status 1:

* every ``"@type"`` names an Envoy (or other) message: the module defining it is imported,
  so that the ``typed_config`` Anys resolve;
* ``json_format.ParseDict`` into ``envoy.config.bootstrap.v3.Bootstrap``: unknown or
  misspelled fields, bad enum names, bad durations and wrong value types are errors;
* the protoc-gen-validate rules the protos carry, which Envoy enforces when it loads a
  config (required messages and oneofs, numeric and duration bounds such as ports, string
  lengths and prefixes, item counts, defined enums): xds-protos ships the rules but no
  validator, and its runtime does not work with protobuf 7. Not checked: string patterns
  and well-known formats (header names, addresses);
* every cluster a route, an ``HttpUri`` or an Envoy gRPC service names is defined, and no
  cluster twice. Envoy's other semantic checks (file paths, DNS names) need Envoy itself.

On success the parsed config is printed as JSON with field names as in the protos and
every Any expanded, for tests to assert on.
"""

from __future__ import annotations

import argparse
import importlib
import operator
import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

# Envoy's messages are classes made at run time from descriptors, without stubs.
Proto = Any

BOOTSTRAP = "envoy.config.bootstrap.v3.Bootstrap"
ANY = "google.protobuf.Any"
NUMERIC_RULES = frozenset(
    [f"{kind}{bits}" for kind in ("int", "uint", "sint", "fixed", "sfixed") for bits in (32, 64)]
    + ["float", "double"]
)
WRAPPERS = frozenset(
    f"google.protobuf.{kind}Value"
    for kind in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String")
)
COMPARISONS = (
    ("const", "must equal", operator.eq),
    ("lt", "must be <", operator.lt),
    ("lte", "must be <=", operator.le),
    ("gt", "must be >", operator.gt),
    ("gte", "must be >=", operator.ge),
)
# Messages that name a cluster, and the field that does.
CLUSTER_REFERENCES = {
    "envoy.config.route.v3.RouteAction": "cluster",
    "envoy.config.route.v3.WeightedCluster.ClusterWeight": "name",
    "envoy.config.core.v3.HttpUri": "cluster",
    "envoy.config.core.v3.GrpcService.EnvoyGrpc": "cluster_name",
}


class ConfigError(Exception):
    """The config is not one Envoy would load; the message names the field."""


def _message_class(full_name: str) -> type[Message] | None:
    """The class of a message, importing the package of ``*_pb2`` modules that defines it."""
    pool = descriptor_pool.Default()
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
    except KeyError:
        pass
    parts = full_name.split(".")
    # "a.b.v3.Outer.Inner": try the longest package first.
    for cut in range(len(parts) - 1, 0, -1):
        try:
            package = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
            if module.name.endswith("_pb2"):
                importlib.import_module(f"{package.__name__}.{module.name}")
        try:
            return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
        except KeyError:
            return None
    return None


def _type_urls(node: object, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "@type":
                yield path, str(value)
            else:
                yield from _type_urls(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _type_urls(item, f"{path}[{index}]")


def _import_typed_configs(config: dict[str, Any]) -> None:
    for path, url in _type_urls(config, ""):
        if "/" not in url:
            raise ConfigError(f"{path}.@type: {url!r} is not a type URL (type.googleapis.com/...)")
        if _message_class(url.rsplit("/", 1)[1]) is None:
            raise ConfigError(f"{path}.@type: unknown type URL {url!r}: no such message")


def _walk(message: Proto, path: str) -> Iterator[tuple[str, Proto]]:
    """Every message in the tree with its path, the contents of each Any included."""
    yield path, message
    if message.DESCRIPTOR.full_name == ANY:
        type_url: str = message.type_url
        type_name = type_url.rsplit("/", 1)[-1]
        message_class = _message_class(type_name)
        if message_class is None:
            raise ConfigError(f"{path}: type URL {type_url!r} does not resolve")
        inner = message_class()
        try:
            inner.ParseFromString(message.value)
        except DecodeError as error:
            raise ConfigError(f"{path}: {type_url!r} does not decode: {error}") from error
        yield from _walk(inner, f"{path}<{type_name}>")
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for key, item in value.items():
                    yield from _walk(item, f"{path}.{field.name}[{key!r}]")
        elif field.is_repeated:
            for index, item in enumerate(value):
                yield from _walk(item, f"{path}.{field.name}[{index}]")
        else:
            yield from _walk(value, f"{path}.{field.name}")


def _nanos(duration: Proto) -> int:
    return int(duration.seconds) * 10**9 + int(duration.nanos)


def _bound_faults(value: Any, rules: Proto, as_number: Any = None) -> Iterator[str]:
    """Numeric rules (const, lt, lte, gt, gte, in); ``as_number`` turns a Duration bound into
    nanoseconds, as ``value`` already is."""
    for name, words, holds in COMPARISONS:
        if rules.HasField(name):
            bound = getattr(rules, name)
            if not holds(value, as_number(bound) if as_number else bound):
                yield f"{words} {bound.ToJsonString() if as_number else bound}"
    allowed = [as_number(item) if as_number else item for item in getattr(rules, "in")]
    if allowed and value not in allowed:
        yield "is not one of the allowed values"


def _value_faults(value: Any, field: FieldDescriptor, rules: Proto) -> Iterator[str]:
    """protoc-gen-validate rules for one value (a scalar, an enum or a Duration)."""
    kind = rules.WhichOneof("type")
    if kind in NUMERIC_RULES:
        yield from _bound_faults(value, getattr(rules, kind))
    elif kind == "string":
        string = rules.string
        if string.HasField("min_len") and len(value) < string.min_len:
            yield f"must have at least {string.min_len} characters"
        if string.HasField("max_len") and len(value) > string.max_len:
            yield f"must have at most {string.max_len} characters"
        if string.HasField("prefix") and not value.startswith(string.prefix):
            yield f"must start with {string.prefix!r}"
    elif kind == "enum" and field.enum_type is not None:
        if rules.enum.defined_only and value not in field.enum_type.values_by_number:
            yield f"{value} is not a value of {field.enum_type.full_name}"
    elif kind == "duration":
        yield from _bound_faults(_nanos(value), rules.duration, _nanos)


def _repeated_faults(values: Any, field: FieldDescriptor, rules: Proto) -> Iterator[str]:
    kind = rules.WhichOneof("type")
    if kind in ("map", "repeated") and getattr(rules, kind).ignore_empty and not values:
        return
    if kind == "map" and len(values) < rules.map.min_pairs:
        yield f"needs at least {rules.map.min_pairs} entries"
    if kind != "repeated":
        return
    repeated = rules.repeated
    if len(values) < repeated.min_items:
        yield f"needs at least {repeated.min_items} items"
    if repeated.HasField("max_items") and len(values) > repeated.max_items:
        yield f"takes at most {repeated.max_items} items"
    if repeated.HasField("items") and field.message_type is None:
        for value in values:
            yield from _value_faults(value, field, repeated.items)


def _field_faults(message: Proto, field: FieldDescriptor, rules: Proto) -> Iterator[str]:
    value = getattr(message, field.name)
    if field.is_repeated:
        yield from _repeated_faults(value, field, rules)
        return
    present = message.HasField(field.name) if field.has_presence else True
    if field.containing_oneof is not None and not present:
        return  # as protoc-gen-validate: only the member that is set is checked
    kind = rules.WhichOneof("type")
    required = kind in ("message", "duration", "any", "timestamp") and getattr(rules, kind).required
    if required and not present:
        yield "is required"
    if not present:
        return
    if field.message_type is not None and field.message_type.full_name in WRAPPERS:
        value = value.value  # the rule is about the wrapped value
    if kind is not None and getattr(getattr(rules, kind), "ignore_empty", False) and not value:
        return
    yield from _value_faults(value, field, rules)


def _validation_faults(message: Proto, validate: Any) -> Iterator[str]:
    """The faults protoc-gen-validate would find in this message (not in those inside it)."""
    options = message.DESCRIPTOR.GetOptions()
    if options.Extensions[validate.disabled] or options.Extensions[validate.ignored]:
        return
    for oneof in message.DESCRIPTOR.oneofs:
        if oneof.GetOptions().Extensions[validate.required] and not message.WhichOneof(oneof.name):
            names = ", ".join(field.name for field in oneof.fields)
            yield f" needs one of {names}"
    for field in message.DESCRIPTOR.fields:
        options = field.GetOptions()
        if options.HasExtension(validate.rules):
            for fault in _field_faults(message, field, options.Extensions[validate.rules]):
                yield f".{field.name} {fault}"


def _check_rules_and_references(bootstrap: Proto) -> None:
    validate = importlib.import_module("validate.validate_pb2")
    named: list[tuple[str, str]] = []
    for path, message in _walk(bootstrap, "Bootstrap"):
        for fault in _validation_faults(message, validate):
            raise ConfigError(f"{path}{fault}")
        kind = message.DESCRIPTOR.full_name
        if kind in CLUSTER_REFERENCES:
            named.append((path, getattr(message, CLUSTER_REFERENCES[kind])))
    defined = [cluster.name for cluster in bootstrap.static_resources.clusters]
    twice = sorted({name for name in defined if defined.count(name) > 1})
    if twice:
        raise ConfigError(f"Bootstrap.static_resources.clusters: {twice} defined twice")
    # With CDS, clusters may come later; without, Envoy refuses a name it does not know.
    if not bootstrap.dynamic_resources.HasField("cds_config"):
        for path, name in named:
            if name and name not in defined:
                raise ConfigError(f"{path}: cluster {name!r} is not defined")


def check(config_path: Path) -> str:
    """The config parsed and checked, as JSON; ConfigError names the first fault."""
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read: {error}") from error
    if not isinstance(config, dict):
        raise ConfigError("the top level must be a mapping (an Envoy Bootstrap)")
    bootstrap_class = _message_class(BOOTSTRAP)
    if bootstrap_class is None:
        raise ConfigError(f"{BOOTSTRAP} is not importable: is xds-protos installed?")
    _import_typed_configs(config)
    bootstrap = bootstrap_class()
    try:
        json_format.ParseDict(config, bootstrap, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        raise ConfigError(str(error)) from error
    _check_rules_and_references(bootstrap)
    return json_format.MessageToJson(bootstrap, preserving_proto_field_name=True, indent=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="Envoy bootstrap, YAML")
    args = parser.parse_args(argv)
    try:
        print(check(args.config))
    except ConfigError as error:
        print(f"envoy_check: {args.config}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
