"""`--set KEY=VALUE`: any field of an experiment, its training config or its method's parts, typed and validated.

Keys: `train.FIELD` (TrainConfig), `PART.FIELD` for a part of the method (`mms.margin_lambda`, `bma.alpha`,
`ogen.k`, ...), `ood.SCORE.PARAM` for an OOD score's parameter (`ood.GL-MCM.lambda`, `evaluation/ood.py`), or an
experiment field (`per_cell`, `holdout_fraction`, `fpr_rule`, ...). Values are parsed by
the field's type: numbers, `none` for optional fields, comma-separated tuples (`wise-ft.mixes=0,0.5,1`).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import replace
from typing import Any, Dict, Iterable, Tuple

from clipood_kit.evaluation.ood import score_params
from clipood_kit.methods import MethodConfig

SKIP_EXPERIMENT = ("method", "train", "ood_params")


def _fields(obj) -> Dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj) if f.name not in SKIP_EXPERIMENT}


def parse_value(key: str, text: str, kind: Any) -> Any:
    """`text` as the type `kind` (int, float, str, bool, Optional[...], Tuple[float, ...], List[str])."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union and type(None) in args:
        if text.lower() == "none":
            return None
        return parse_value(key, text, next(a for a in args if a is not type(None)))
    try:
        if origin in (tuple, list):
            items = [parse_value(key, t.strip(), args[0]) for t in text.split(",") if t.strip()]
            return tuple(items) if origin is tuple else items
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is int:
            return int(text)
        if kind is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        name = getattr(kind, "__name__", str(kind))
        raise ValueError(f"--set {key}={text}: expected a finite {name}"
                         + (" list, comma-separated" if origin in (tuple, list) else "")) from None
    return text


def split_setting(item: str) -> Tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"--set {item!r}: write KEY=VALUE, e.g. --set mms.margin_lambda=0.2 or --set train.lr=1e-4")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def _part_field(method: MethodConfig, key: str) -> Tuple[Any, str, Any]:
    """(part config, field name, field type) of a 'PART.FIELD' key, or a named error; the part is None when the
    method lacks it."""
    kind, _, name = key.partition(".")
    part = method.part(kind)
    if part is None:
        return None, name, None
    fields = _fields(part)
    if name not in fields:
        raise ValueError(f"--set {key}: part {kind!r} has no field {name!r}; its fields are {list(fields)}")
    return part, name, fields[name]


def _no_part(method: MethodConfig, key: str) -> ValueError:
    return ValueError(f"--set {key}: method {method.name!r} has no part {key.partition('.')[0]!r}; its parts are "
                      f"{method.describe()}; other keys: train.FIELD or an experiment field")


def set_method_fields(method: MethodConfig, values: Dict[str, Any], only_present: bool = False) -> MethodConfig:
    """A copy of `method` with `{'PART.FIELD': value}` set (values already typed). `only_present` skips parts the
    method lacks (a bench setting such as 'ema.decay' applies to the methods that average with EMA)."""
    given: Dict[str, set] = {}
    for key, value in values.items():
        part, name, _ = _part_field(method, key)
        if part is None:
            if only_present:
                continue
            raise _no_part(method, key)
        method = method.replace_part(replace(part, **{name: value}))
        given.setdefault(part.kind, set()).add(name)
    for kind, names in given.items():          # fields that follow from the ones set (PartConfig.settled)
        method = method.replace_part(method.part(kind).settled(names))
    method.validate()
    return method


def apply_settings(exp, items: Iterable[str]):
    """An ExperimentConfig with every `KEY=VALUE` of `items` applied (see the module docstring)."""
    top: Dict[str, Any] = {}
    train: Dict[str, Any] = {}
    method = exp.method
    part_values: Dict[str, Any] = {}            # set together, so fields that follow one another settle once
    for item in items:
        key, text = split_setting(item)
        head, _, name = key.partition(".")
        if head == "ood":
            ood_params = dict(top.get("ood_params", exp.ood_params))
            ood_params[name] = parse_value(key, text, float)
            score_params(ood_params)
            top["ood_params"] = ood_params
        elif head == "train":
            fields = _fields(exp.train)
            if name not in fields:
                raise ValueError(f"--set {key}: the training config has no field {name!r}; its fields are {list(fields)}")
            train[name] = parse_value(key, text, fields[name])
        elif name:
            part, _, kind = _part_field(method, key)
            if part is None:
                raise _no_part(method, key)
            part_values[key] = parse_value(key, text, kind)
        else:
            fields = _fields(exp)
            if key not in fields:
                raise ValueError(f"--set {key}: unknown key; use train.FIELD, PART.FIELD (parts of this method: "
                                 f"{method.describe()}) or an experiment field ({', '.join(fields)})")
            top[key] = parse_value(key, text, fields[key])
    if part_values:
        method = set_method_fields(method, part_values)
    new_train = replace(exp.train, **train)
    new_train.validate()
    return replace(exp, **top, method=method, train=new_train)
