"""Load the YAML rulebook: read, validate, cross-check and compile it, once, at load.

A rulebook is a directory (``rules/`` by default)::

    rules/
      funders.yaml            who pays subsidies (required)
      campaigns/*.yaml        one campaign per file (``*.yml`` too); may be none

Other files in the directory (``scoring.yaml``, ``README.md``, dot files) are
not part of the rulebook and not part of its version. Sub-directories of
``campaigns/``, and files there whose suffix is ``.yaml`` or ``.yml`` in
another case (``c.YAML``), are refused rather than silently skipped.

``funders.yaml``::

    funders:
      - {id: city_federation, name: Changzhou Federation of Trade Unions, kind: city_federation}

``kind`` is one of ``FUNDER_KINDS``.

``campaigns/<name>.yaml`` (every field not marked optional is required)::

    campaign:
      id: city-dining-2026                   # [a-z0-9_-], unique across the rulebook
      name: City-wide dining subsidy
      funders:                               # optional if the campaign has no subsidy rule
        - {funder: city_federation, share_percent: 60}
        - {funder: partner_bank, share_percent: 40}      # shares add up to 100; 2 decimals at most
      valid: {from: 2026-01-01, until: 2027-12-31}       # inclusive dates, Asia/Shanghai
      budget_fen: 50000000                   # optional: the campaign's total, in fen
      limits:                                # optional: shared by all rules of the campaign
        - {per: card, period: month, fen_max: 5000}
      rules:
        - id: dining-10pct                   # unique within the campaign
          priority: 100                      # optional, default 100; lower runs first
          exclusive: false                   # optional: if it gives > 0, later rules of its kind stop
          when:                              # optional; every condition given must hold
            categories: [dining]             # CATEGORIES
            districts: [wujin, xinbei]       # DISTRICTS
            merchant_ids: [m-wujin-dining-001]
            member_groups: [model_worker]    # the member must be in at least one
            weekdays: [sat, sun]             # mon..sun, Asia/Shanghai
            time_of_day: {from: "11:00", until: "14:00"}   # [from, until), Asia/Shanghai; until may be "24:00"
            dates: {from: 2026-12-01, until: 2026-12-31}   # inclusive, Asia/Shanghai
            amount_fen_min: 2000
          benefit:                           # exactly one of discount (merchant) / subsidy (funders)
            subsidy: {percent: 10, fen_max: 2000}          # percent (2 decimals at most), optional cap
            # discount: {fixed_fen: 500}                   # or a fixed amount
          limits:                            # optional: this rule's own caps
            - {per: card, period: day, uses_max: 1}        # per card: uses_max and/or fen_max
            - {per: merchant, period: week, fen_max: 100000}   # per merchant: fen_max only
      examples:                              # optional worked examples, run by `rules check` and the tests
        - name: weekday lunch
          swipe: {amount_fen: 10000, occurred_at: "2026-11-25T12:00:00+08:00",
                  merchant_id: m-wujin-dining-001, category: dining, district: wujin,
                  member_groups: []}         # member_groups optional
          expect:                            # the benefits in order; [] means none
            - {rule: dining-10pct, subsidy_fen: 1000}
            - {rule: other-campaign/rule-id, discount_fen: 500}   # a rule of another campaign

Periods are ``day``, ``week`` (ISO, from Monday), ``month``, ``year`` and
``campaign`` (the whole campaign). An example runs against the *whole*
rulebook, on empty counters, for one card, so it shows what a member really
gets, stacking included.

Numbers are YAML integers; percentages may carry up to two decimals and are
read as exact decimals (never floats) before they become basis points. Times
may be written unquoted (``11:00``): the loader does not read YAML 1.1
base-60 numbers. Aliases, tags other than ``!!str`` (``!!map`` and ``!!seq`` on
their own kinds), duplicate keys and more than one document per file are refused. See ``docs/rules.md``.

Error tree::

    RulebookError        the rulebook was refused; .problems lists every problem
                         as "file:line: path: reason", .details as Problem values
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any, TypeVar

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validates_schema
from yaml.resolver import Resolver

from pos_engine.domain.clock import PERIODS
from pos_engine.domain.evaluation import Swipe, decide, execute_plan, plan_swipe
from pos_engine.domain.money import BP_PER_WHOLE
from pos_engine.domain.rulebook import (
    CATEGORIES,
    DISTRICTS,
    ID_HINT,
    ID_PATTERN,
    LIMIT_SUBJECTS,
    MERCHANT_ID_HINT,
    MERCHANT_ID_PATTERN,
    WEEKDAYS,
    Benefit,
    Campaign,
    Conditions,
    Example,
    Funder,
    FunderShare,
    Limit,
    Rule,
    Rulebook,
)
from pos_engine.limits import AMOUNT_FEN_MAX as SWIPE_AMOUNT_FEN_MAX
from pos_engine.limits import (
    BENEFITS_PER_EXAMPLE_MAX,
    EXAMPLES_PER_FILE_MAX,
    FUNDERS_MAX,
    FUNDERS_PER_CAMPAIGN_MAX,
    ID_CHARS_MAX,
    LIMITS_PER_OWNER_MAX,
    MEMBER_GROUPS_PER_LIST_MAX,
    MERCHANT_IDS_PER_RULE_MAX,
    PERCENT_DECIMALS_MAX,
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    PROBLEMS_REPORTED_MAX,
    RULE_AMOUNT_FEN_MAX,
    RULE_FILE_BYTES_MAX,
    RULE_FILES_MAX,
    RULES_PER_FILE_MAX,
    RULES_PER_RULEBOOK_MAX,
    TEXT_CHARS_MAX,
    USES_MAX,
    YAML_DEPTH_MAX,
)

# Where things are inside a rulebook directory.
FUNDERS_FILE = "funders.yaml"
CAMPAIGNS_DIR = "campaigns"
RULE_FILE_SUFFIXES = (".yaml", ".yml")


FUNDER_KINDS = ("city_federation", "district_federation", "industry_union", "partner_bank", "employer")
EXAMPLE_CARD_REF = "example-card"

_RULE_REF = re.compile(rf"(?:{ID_PATTERN.pattern}/)?{ID_PATTERN.pattern}")
_RULE_REF_HINT = "a rule id of this campaign, or campaign-id/rule-id"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")
_DECIMAL_INT = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)")
MOMENT_YEARS = (2000, 9998)  # a worked example's swipe
NUMBER_DIGITS_MAX = 30  # digits a YAML number may have before or after its point; the largest amount has 13

_T = TypeVar("_T")
PathPart = str | int
DocPath = tuple[PathPart, ...]


# -- problems ------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One reason a rulebook was refused: where (file, line, path) and why."""

    file: str
    line: int | None
    path: str
    reason: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


class RulebookError(Exception):
    """The rulebook was refused; `problems` lists every problem found, file by file."""

    def __init__(self, details: Sequence[Problem]) -> None:
        self.details = tuple(details)
        self.problems = [str(problem) for problem in self.details]
        super().__init__("\n".join(self.problems))


def format_path(path: DocPath) -> str:
    """Spell a document path the way problems show it: campaign.rules[3].when.weekdays[0]."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def _describe(value: object) -> str:
    """Show an input value in a message, briefly."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return str(value)


# -- reading YAML ----------------------------------------------------------------


class _YamlRefused(Exception):
    """A file that cannot be read any further (syntax, aliases, depth)."""

    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


@dataclass
class _Document:
    """One file, read: its plain data and the line of every path in it."""

    data: Any
    lines: dict[DocPath, int]
    duplicate_keys: list[tuple[DocPath, int, int]] = field(default_factory=list)  # path, line, first line

    def line_of(self, path: DocPath) -> int | None:
        """The line of `path`, or of its nearest ancestor that exists (for a missing field)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


_RESOLVER = Resolver()
_TAG = "tag:yaml.org,2002:"


def _resolve_tag(event: yaml.ScalarEvent) -> str:
    """The tag YAML's implicit resolvers give a scalar (str, int, float, bool, null, timestamp)."""
    tag: str = _RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
    return tag


def _scalar(value: str, tag: str) -> Any:
    """Turn a resolved YAML scalar into plain data: never a float, never an arbitrary object."""
    kind = tag.removeprefix(_TAG)
    if kind == "null":
        return None
    if kind == "bool":
        return value.lower() in ("yes", "true", "on")
    if kind == "int":
        # Only decimal integers are numbers; '11:00' (YAML 1.1 base 60), '0x1f'
        # and '010' stay text, so a time of day can be written unquoted.
        # Past NUMBER_DIGITS_MAX digits it stays text (and is refused as not a number): no amount is that
        # long, and Python refuses to read an integer of over 4,300 digits.
        digits = value.replace("_", "")
        return int(digits) if _DECIMAL_INT.fullmatch(value) and len(digits.lstrip("+-")) <= NUMBER_DIGITS_MAX else value
    if kind == "float":
        try:
            number = Decimal(value.replace("_", ""))
        except InvalidOperation:
            return value
        # Likewise a decimal beyond NUMBER_DIGITS_MAX digits either side of the point (1e999999 would overflow
        # the arithmetic that checks it).
        if not number.is_finite():
            return value
        exponent = number.as_tuple().exponent
        assert isinstance(exponent, int)  # a finite decimal's
        if abs(number.adjusted()) > NUMBER_DIGITS_MAX or -exponent > NUMBER_DIGITS_MAX:
            return value
        return number
    if kind == "timestamp":
        try:
            return date.fromisoformat(value) if _DATE.fullmatch(value) else datetime.fromisoformat(value)
        except ValueError:
            return value  # '2026-13-01' is refused later, with its path, as text
    return value


# libyaml's parser (bundled with PyYAML's wheels) reads a rule file about 15 times faster than PyYAML's own
# (docs/performance-rounds.md, twentieth round). A file whose YAML it refuses is read again, from the start, by PyYAML's,
# so that the refusal is worded and placed as it always was. libyaml takes a few things PyYAML's parser refused
# (a tab after a colon, a '?' inside a flow collection: docs/rules.md); tests hold the two to each other on the
# rule files we ship and generate.
_FAST_LOADER: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(text: str) -> _Document:
    """Build plain data and a path → line map from the file's YAML events, read by libyaml; see _FAST_LOADER."""
    try:
        return _read_events(text, _FAST_LOADER)
    except _YamlRefused as refused:
        if _FAST_LOADER is yaml.SafeLoader or not isinstance(refused.__cause__, yaml.YAMLError):
            raise  # PyYAML's parser read it already, or the refusal is the loader's own (an alias, a tag, …)
    return _read_events(text, yaml.SafeLoader)


def _read_events(text: str, loader: type[Any]) -> _Document:
    """Build plain data and a path → line map from YAML events, iteratively.

    The composer and constructor of PyYAML are not used: they recurse (a deep
    file would exhaust the stack) and they expand aliases (a small file could
    become a huge object graph). The event parser is neither.
    """
    lines: dict[DocPath, int] = {}
    duplicates: list[tuple[DocPath, int, int]] = []
    stack: list[tuple[dict[str, Any] | list[Any], DocPath]] = []
    pending_keys: list[tuple[str, bool] | None] = []  # per open mapping: (key, is a duplicate) awaiting its value
    root: Any = None
    documents = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            line = event.start_mark.line + 1 if event.start_mark is not None else None
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise _YamlRefused(line, "a rule file holds one YAML document; remove the second '---'")
                continue
            if isinstance(event, yaml.AliasEvent):
                raise _YamlRefused(line, "YAML aliases (*name) are not supported; write the value out")
            if isinstance(event, yaml.CollectionEndEvent):
                stack.pop()
                pending_keys.pop()
                continue
            if not isinstance(event, yaml.NodeEvent):
                continue  # stream start/end, document end
            # A node: a mapping key, or a value in a list, a mapping or at the root.
            parent = stack[-1] if stack else None
            if parent is not None and isinstance(parent[0], dict) and pending_keys[-1] is None:
                if not isinstance(event, yaml.ScalarEvent):
                    raise _YamlRefused(line, "mapping keys must be plain text")
                key = event.value
                key_path = (*parent[1], key)
                duplicate = key in parent[0]
                if duplicate:
                    duplicates.append((key_path, line or 0, lines.get(key_path, 0)))
                else:
                    lines[key_path] = line or 0
                pending_keys[-1] = (key, duplicate)
                continue
            if parent is None:
                path: DocPath = ()
            elif isinstance(parent[0], list):
                path = (*parent[1], len(parent[0]))
                lines[path] = line or 0
            else:
                pending = pending_keys[-1]
                assert pending is not None
                # A duplicate's value is read (for syntax) but kept out of the data and the line map.
                path = (*parent[1], pending[0] if not pending[1] else f"{pending[0]}\x00duplicate")
            value: Any
            if isinstance(event, yaml.ScalarEvent):
                if event.tag not in (None, "!", _TAG + "str"):
                    raise _YamlRefused(line, f"YAML tag {event.tag} is not supported")
                tag = _TAG + "str" if event.tag is not None else _resolve_tag(event)
                value = _scalar(event.value, tag)
            else:
                assert isinstance(event, yaml.CollectionStartEvent)
                if event.tag is not None and event.tag != _TAG + ("map" if isinstance(event, yaml.MappingStartEvent) else "seq"):
                    raise _YamlRefused(line, f"YAML tag {event.tag} is not supported")
                if len(stack) >= YAML_DEPTH_MAX:
                    raise _YamlRefused(line, f"nested deeper than {YAML_DEPTH_MAX} levels")
                value = {} if isinstance(event, yaml.MappingStartEvent) else []
            if parent is None:
                root = value
                lines[()] = line or 1
            elif isinstance(parent[0], list):
                parent[0].append(value)
            else:
                pending = pending_keys[-1]
                assert pending is not None
                if not pending[1]:
                    parent[0][pending[0]] = value
                pending_keys[-1] = None
            if isinstance(event, yaml.CollectionStartEvent):
                stack.append((value, path))
                pending_keys.append(None)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        reason = " ".join(part for part in (error.context, error.problem) if part)
        raise _YamlRefused(mark.line + 1 if mark is not None else None, f"YAML syntax: {reason}") from error
    except yaml.reader.ReaderError as error:  # a character YAML does not allow (a NUL, a control character)
        line = text.count("\n", 0, error.position) + 1
        raise _YamlRefused(line, f"YAML syntax: character #x{error.character:04x} is not allowed in YAML") from error
    except yaml.YAMLError as error:
        raise _YamlRefused(None, f"YAML syntax: {error}") from error
    return _Document(root, lines, duplicates)


# -- fields ------------------------------------------------------------------------


class _Field(fields.Field[_T]):
    """A field with messages that name the input."""

    default_error_messages = {  # noqa: RUF012  (marshmallow merges this class attribute by design)
        "required": "missing required field",
        "null": "has no value; give one or leave the field out",
    }


class _Text(_Field[str]):
    """Text, optionally one of `choices` or matching `pattern`."""

    def __init__(
        self,
        *,
        choices: Sequence[str] | None = None,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
        chars_max: int = TEXT_CHARS_MAX,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.choices = choices
        self.pattern = pattern
        self.hint = hint
        self.chars_max = chars_max

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError(f"must be text, got {_describe(value)}")
        if self.choices is not None and value not in self.choices:
            raise ValidationError(f"{_describe(value)} is not one of {', '.join(self.choices)}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise ValidationError(f"{_describe(value)} is not valid here: {self.hint}")
        if not value.strip():
            raise ValidationError("must not be blank")
        if len(value) > self.chars_max:
            raise ValidationError(f"is longer than {self.chars_max} characters")
        return value


class _Whole(_Field[int]):
    """A whole number of `unit` between `minimum` and `maximum`."""

    def __init__(self, *, unit: str, minimum: int = 1, maximum: int = RULE_AMOUNT_FEN_MAX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unit = unit
        self.minimum = minimum
        self.maximum = maximum

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            of_unit = f" of {self.unit}" if self.unit else ""
            raise ValidationError(f"must be a whole number{of_unit}, got {_describe(value)}")
        if value < self.minimum:
            bound = "more than 0" if self.minimum == 1 else f"at least {self.minimum}"
            raise ValidationError(f"must be {bound}, got {value}")
        if value > self.maximum:
            raise ValidationError(f"must be at most {self.maximum}, got {value}")
        return value


def percent_to_bp(value: object) -> int | None:
    """Turn a YAML percentage (int or exact decimal, 2 decimals at most) into basis points; None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    with localcontext() as exact:  # enough digits for any YAML number _scalar lets through: no rounding
        exact.prec = 4 * NUMBER_DIGITS_MAX
        basis_points = Decimal(value) * (BP_PER_WHOLE // 100)
    if basis_points != basis_points.to_integral_value():
        return None
    return int(basis_points)


def format_percent(basis_points: int) -> str:
    """Show basis points as a percentage: 3334 -> '33.34'."""
    whole, rest = divmod(basis_points, 100)
    return f"{whole}" if rest == 0 else f"{whole}.{rest:02d}".rstrip("0")


class _Percent(_Field[int]):
    """A percentage above 0 and at most 100, loaded as basis points."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise ValidationError(f"must be a number of percent, got {_describe(value)}")
        basis_points = percent_to_bp(value)
        if basis_points is None:
            raise ValidationError(f"{value} has more than {PERCENT_DECIMALS_MAX} decimals")
        if basis_points <= 0:
            raise ValidationError(f"must be more than 0, got {value}")
        if basis_points > BP_PER_WHOLE:
            raise ValidationError(f"must be at most 100, got {value}")
        return basis_points


class _Flag(_Field[bool]):
    """true or false, nothing else."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError(f"must be true or false, got {_describe(value)}")
        return value


class _Day(_Field[date]):
    """A calendar date, YYYY-MM-DD."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> date:
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        if isinstance(value, str) and _DATE.fullmatch(value):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        raise ValidationError(f"{_describe(value)} is not a date (YYYY-MM-DD)")


class _ClockTime(_Field[time]):
    """A time of day, HH:MM; '24:00' (the end of the day) only where `end_of_day_allowed`."""

    def __init__(self, *, end_of_day_allowed: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.end_of_day_allowed = end_of_day_allowed

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> time:
        match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
        if match is not None:
            hour, minute = int(match[1]), int(match[2])
            if self.end_of_day_allowed and (hour, minute) == (24, 0):
                return time.max  # the end of the day; compiled as "no upper bound"
            if hour < 24 and minute < 60:
                return time(hour, minute)
        end = " or '24:00'" if self.end_of_day_allowed else ""
        raise ValidationError(f"{_describe(value)} is not a time of day (HH:MM, '00:00' to '23:59'{end})")


class _Instant(_Field[datetime]):
    """A moment with its UTC offset: 2026-11-25T12:00:00+08:00."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> datetime:
        moment = value if isinstance(value, datetime) else None
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                moment = None
        if moment is None:
            raise ValidationError(f"{_describe(value)} is not a date and time (2026-11-25T12:00:00+08:00)")
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValidationError(f"{_describe(str(value))} needs a UTC offset, such as +08:00")
        if not MOMENT_YEARS[0] <= moment.year <= MOMENT_YEARS[1]:  # its day, week and month in Asia/Shanghai must exist
            raise ValidationError(f"{_describe(str(value))} is not between the years {MOMENT_YEARS[0]} and {MOMENT_YEARS[1]}")
        return moment


class _List(fields.List[_T]):
    """A list with a length range, checked before its items, and optionally no repeats."""

    default_error_messages = {  # noqa: RUF012  (marshmallow merges this class attribute by design)
        "invalid": "must be a list",
        "required": "missing required field",
        "null": "has no value; give a list or leave the field out",
    }

    def __init__(self, inner: fields.Field[_T], *, items_max: int, items_min: int = 0, unique: bool = False, **kwargs: Any) -> None:
        super().__init__(inner, **kwargs)
        self.items_max = items_max
        self.items_min = items_min
        self.unique = unique
        if self.required:  # a required list cannot be left out
            self.error_messages["null"] = "has no value; give a list"

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> list[_T | None]:
        if not isinstance(value, list):
            raise ValidationError(f"must be a list, got {_describe(value)}")
        if len(value) > self.items_max:
            raise ValidationError(f"has {len(value)} items; at most {self.items_max} are allowed")
        if len(value) < self.items_min:
            if self.items_min == 1:
                raise ValidationError("must not be empty" if self.required else "must not be empty; leave the field out to mean 'any'")
            raise ValidationError("is too short")
        items = super()._deserialize(value, attr, data, **kwargs)
        if self.unique:
            seen: set[Any] = set()
            errors: dict[int, list[str]] = {}
            for index, item in enumerate(items):
                if item in seen:
                    errors[index] = [f"{_describe(item)} is listed twice"]
                seen.add(item)
            if errors:
                raise ValidationError(errors)
        return items


def _nested(schema: type[Schema], **kwargs: Any) -> fields.Nested:
    return fields.Nested(
        schema,
        error_messages={"required": "missing required field", "null": "has no value; give a mapping or leave the field out"},
        **kwargs,
    )


# -- schemas -----------------------------------------------------------------------


def _keys(original: object) -> set[str]:
    """The fields given in a mapping, valid or not: the checks of which fields go together use these."""
    return {key for key in original if isinstance(key, str)} if isinstance(original, Mapping) else set()


class _Schema(Schema):
    """A schema that refuses unknown fields and says which fields it knows."""

    class Meta:
        unknown = RAISE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = ", ".join(field.data_key or name for name, field in self.load_fields.items())
        self.error_messages = {
            **self.error_messages,
            "unknown": f"unknown field (allowed here: {names})",
            "type": f"must be a mapping (with {names})",
        }


class FunderSchema(_Schema):
    """A funder in funders.yaml."""

    funder_id = _Text(data_key="id", required=True, pattern=ID_PATTERN, hint=ID_HINT)
    name = _Text(required=True)
    kind = _Text(required=True, choices=FUNDER_KINDS)


class FundersFileSchema(_Schema):
    """funders.yaml."""

    funders = _List(_nested(FunderSchema), required=True, items_min=1, items_max=FUNDERS_MAX)


class DateRangeSchema(_Schema):
    """An inclusive range of dates: {from, until}."""

    date_from = _Day(data_key="from", required=True)
    date_until = _Day(data_key="until", required=True)

    @validates_schema(skip_on_field_errors=False)
    def _ordered(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "date_from" in data and "date_until" in data and data["date_from"] > data["date_until"]:
            raise ValidationError(f"{data['date_until']} is before from ({data['date_from']})", field_name="until")


class TimeOfDaySchema(_Schema):
    """A half-open range of times of day: [from, until)."""

    time_from = _ClockTime(data_key="from", required=True)
    time_until = _ClockTime(data_key="until", required=True, end_of_day_allowed=True)

    @validates_schema(skip_on_field_errors=False)
    def _ordered(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "time_from" in data and "time_until" in data and data["time_from"] >= data["time_until"]:
            raise ValidationError(
                "must be later than from; for a window across midnight write two rules",
                field_name="until",
            )


class LimitSchema(_Schema):
    """A cap: per card (uses and/or fen) or per merchant (fen) per period."""

    per = _Text(required=True, choices=LIMIT_SUBJECTS)
    period = _Text(required=True, choices=PERIODS)
    uses_max = _Whole(unit="uses", maximum=USES_MAX)
    fen_max = _Whole(unit="fen")

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _meaningful(self, data: dict[str, Any], original: object, **kwargs: Any) -> None:
        given = _keys(original)
        if "uses_max" not in given and "fen_max" not in given:
            raise ValidationError("a limit needs uses_max, fen_max or both")
        if data.get("per") == "merchant" and "uses_max" in given:
            raise ValidationError("a per-merchant limit counts fen only (fen_max); uses are counted per card", field_name="uses_max")


class ConditionsSchema(_Schema):
    """A rule's `when`: all conditions given must hold."""

    categories = _List(_Text(choices=CATEGORIES), items_min=1, items_max=len(CATEGORIES), unique=True)
    districts = _List(_Text(choices=DISTRICTS), items_min=1, items_max=len(DISTRICTS), unique=True)
    merchant_ids = _List(
        _Text(pattern=MERCHANT_ID_PATTERN, hint=MERCHANT_ID_HINT), items_min=1, items_max=MERCHANT_IDS_PER_RULE_MAX, unique=True
    )
    member_groups = _List(_Text(pattern=ID_PATTERN, hint=ID_HINT), items_min=1, items_max=MEMBER_GROUPS_PER_LIST_MAX, unique=True)
    weekdays = _List(_Text(choices=WEEKDAYS), items_min=1, items_max=len(WEEKDAYS), unique=True)
    time_of_day = _nested(TimeOfDaySchema)
    dates = _nested(DateRangeSchema)
    amount_fen_min = _Whole(unit="fen")


class AmountSchema(_Schema):
    """What a discount or subsidy gives: a percent (with an optional cap) or a fixed amount."""

    percent_bp = _Percent(data_key="percent")
    fen_max = _Whole(unit="fen")
    fixed_fen = _Whole(unit="fen")

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _one_way(self, data: dict[str, Any], original: object, **kwargs: Any) -> None:
        given = _keys(original)
        if "percent" in given and "fixed_fen" in given:
            raise ValidationError("give percent or fixed_fen, not both")
        if "percent" not in given and "fixed_fen" not in given:
            raise ValidationError("give percent (with an optional fen_max) or fixed_fen")
        if "fixed_fen" in given and "fen_max" in given:
            raise ValidationError("fen_max caps a percent; a fixed_fen needs no cap", field_name="fen_max")


class BenefitSchema(_Schema):
    """A rule's one benefit: discount (given by the merchant) or subsidy (paid by the funders)."""

    discount = _nested(AmountSchema)
    subsidy = _nested(AmountSchema)

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _one_kind(self, data: dict[str, Any], original: object, **kwargs: Any) -> None:
        given = _keys(original)
        if "discount" in given and "subsidy" in given:
            raise ValidationError("a rule gives one benefit: discount or subsidy, not both")
        if "discount" not in given and "subsidy" not in given:
            raise ValidationError("give discount or subsidy")


class RuleSchema(_Schema):
    """One rule of a campaign."""

    rule_id = _Text(data_key="id", required=True, pattern=ID_PATTERN, hint=ID_HINT)
    priority = _Whole(unit="", minimum=0, maximum=PRIORITY_MAX, load_default=PRIORITY_DEFAULT)
    exclusive = _Flag(load_default=False)
    when = _nested(ConditionsSchema)
    benefit = _nested(BenefitSchema, required=True)
    limits = _List(_nested(LimitSchema), items_max=LIMITS_PER_OWNER_MAX, load_default=list)


class FunderShareSchema(_Schema):
    """A funder's share of a campaign's subsidies."""

    funder = _Text(required=True, pattern=ID_PATTERN, hint=ID_HINT)
    share_bp = _Percent(data_key="share_percent", required=True)


class ExampleSwipeSchema(_Schema):
    """The swipe of a worked example."""

    amount_fen = _Whole(unit="fen", required=True, maximum=SWIPE_AMOUNT_FEN_MAX)
    occurred_at = _Instant(required=True)
    merchant_id = _Text(required=True, pattern=MERCHANT_ID_PATTERN, hint=MERCHANT_ID_HINT)
    category = _Text(required=True, choices=CATEGORIES)
    district = _Text(required=True, choices=DISTRICTS)
    member_groups = _List(_Text(pattern=ID_PATTERN, hint=ID_HINT), items_max=MEMBER_GROUPS_PER_LIST_MAX, unique=True, load_default=list)


class ExpectedBenefitSchema(_Schema):
    """One benefit a worked example must get."""

    rule = _Text(required=True, pattern=_RULE_REF, hint=_RULE_REF_HINT, chars_max=2 * ID_CHARS_MAX + 1)
    discount_fen = _Whole(unit="fen")
    subsidy_fen = _Whole(unit="fen")

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _one_kind(self, data: dict[str, Any], original: object, **kwargs: Any) -> None:
        given = _keys(original)
        if ("discount_fen" in given) == ("subsidy_fen" in given):
            raise ValidationError("give discount_fen or subsidy_fen (one of them)")


class ExampleSchema(_Schema):
    """A worked example: a swipe and the benefits it must get."""

    name = _Text(required=True)
    swipe = _nested(ExampleSwipeSchema, required=True)
    expect = _List(_nested(ExpectedBenefitSchema), required=True, items_max=BENEFITS_PER_EXAMPLE_MAX)


class CampaignSchema(_Schema):
    """A campaign."""

    campaign_id = _Text(data_key="id", required=True, pattern=ID_PATTERN, hint=ID_HINT)
    name = _Text(required=True)
    funders = _List(_nested(FunderShareSchema), items_max=FUNDERS_PER_CAMPAIGN_MAX, load_default=list)
    valid = _nested(DateRangeSchema, required=True)
    budget_fen = _Whole(unit="fen")
    limits = _List(_nested(LimitSchema), items_max=LIMITS_PER_OWNER_MAX, load_default=list)
    rules = _List(_nested(RuleSchema), required=True, items_min=1, items_max=RULES_PER_FILE_MAX)
    examples = _List(_nested(ExampleSchema), items_max=EXAMPLES_PER_FILE_MAX, load_default=list)


class CampaignFileSchema(_Schema):
    """campaigns/<name>.yaml."""

    campaign = _nested(CampaignSchema, required=True)


def _flatten_messages(messages: Any, path: DocPath = ()) -> Iterator[tuple[DocPath, str]]:
    """Walk marshmallow's nested error messages, yielding (path, message)."""
    if isinstance(messages, dict):
        for key, sub in messages.items():
            yield from _flatten_messages(sub, path if key == "_schema" else (*path, key))
    elif isinstance(messages, list):
        for sub in messages:
            yield from _flatten_messages(sub, path)
    else:
        yield path, str(messages)


# -- loading -----------------------------------------------------------------------


@dataclass
class _File:
    """A rule file on its way through the loader."""

    order: int  # funders.yaml first, then campaign files by name
    relative: str  # posix path inside the rulebook directory, for the version
    shown: str  # the path problems show
    content: bytes = b""
    missing: bool = False
    document: _Document | None = None
    loaded: dict[str, Any] | None = None  # after the schema, if it passed


class _Problems:
    """Collects problems, with their lines, across files."""

    def __init__(self) -> None:
        self.found: list[tuple[int, Problem]] = []

    def add(self, file: _File, path: DocPath, reason: str, line: int | None = None) -> None:
        if line is None and file.document is not None:
            line = file.document.line_of(path)
        self.found.append((file.order, Problem(file.shown, line, format_path(path), reason)))

    def count_for(self, file: _File) -> int:
        return sum(1 for order, _ in self.found if order == file.order)

    def raise_if_any(self) -> None:
        if not self.found:
            return
        ordered = [problem for _, problem in sorted(self.found, key=lambda item: (item[0], item[1].line or 0, item[1].path))]
        if len(ordered) > PROBLEMS_REPORTED_MAX:
            extra = len(ordered) - PROBLEMS_REPORTED_MAX
            ordered = [*ordered[:PROBLEMS_REPORTED_MAX], Problem("...", None, "", f"and {extra} more problems")]
        raise RulebookError(ordered)


def load_rulebook(directory: str | Path) -> Rulebook:
    """Read, validate and compile the rulebook in `directory`; raise RulebookError listing every problem."""
    root = Path(directory)
    problems = _Problems()
    files = _find_files(root, problems)
    if not files or len(files) - 1 > RULE_FILES_MAX:
        problems.raise_if_any()

    for file in files:
        _read_file(root, file, problems)
    funders_file, campaign_files = files[0], files[1:]
    _check_schema(funders_file, FundersFileSchema(), problems)
    for file in campaign_files:
        _check_schema(file, CampaignFileSchema(), problems)
    _check_references(funders_file, campaign_files, problems)
    problems.raise_if_any()

    assert funders_file.loaded is not None
    funders = [Funder(item["funder_id"], item["name"], item["kind"]) for item in funders_file.loaded["funders"]]
    campaigns: list[Campaign] = []
    examples: list[Example] = []
    for file in campaign_files:
        campaign, file_examples = _compile_campaign(file)
        campaigns.append(campaign)
        examples.extend(file_examples)
    rule_count = sum(len(campaign.rules) for campaign in campaigns)
    if rule_count > RULES_PER_RULEBOOK_MAX:
        problems.add(campaign_files[-1], (), f"the rulebook has {rule_count} rules; at most {RULES_PER_RULEBOOK_MAX} are allowed", line=1)
        problems.raise_if_any()
    return Rulebook(rulebook_version([(file.relative, file.content) for file in files]), campaigns, funders, examples)


def rulebook_version(files: Sequence[tuple[str, bytes]]) -> str:
    """A short content hash of the rule files: the first 12 hex digits of SHA-256 over paths and bytes."""
    digest = hashlib.sha256()
    for relative, content in sorted(files):
        name = relative.encode()
        # Lengths first, so no two different sets of files can hash the same byte stream.
        digest.update(f"{len(name)}:{len(content)}:".encode())
        digest.update(name)
        digest.update(content)
    return digest.hexdigest()[:12]


def _find_files(root: Path, problems: _Problems) -> list[_File]:
    """funders.yaml, then the campaign files by name."""
    funders = _File(0, FUNDERS_FILE, str(root / FUNDERS_FILE))
    if not root.is_dir():
        problems.add(_File(0, "", str(root)), (), "is not a directory")
        return []
    if not (root / FUNDERS_FILE).is_file():
        exists = (root / FUNDERS_FILE).exists()
        problems.add(funders, (), "is not a file" if exists else "missing: a rulebook needs funders.yaml")
        funders.missing = True
    campaigns_dir = root / CAMPAIGNS_DIR
    if campaigns_dir.exists() and not campaigns_dir.is_dir():
        problems.add(_File(1, CAMPAIGNS_DIR, str(campaigns_dir)), (), "is not a directory; campaign files go in campaigns/")
    entries = sorted(campaigns_dir.iterdir()) if campaigns_dir.is_dir() else []
    files = [funders]
    for entry in entries:
        if entry.name.startswith("."):
            continue
        relative = f"{CAMPAIGNS_DIR}/{entry.name}"
        if entry.is_dir():
            problems.add(_File(len(files), relative, str(entry)), (), "sub-directories of campaigns/ are not read; move the files up")
        elif entry.suffix in RULE_FILE_SUFFIXES:
            files.append(_File(len(files), relative, str(entry)))
        elif entry.suffix.lower() in RULE_FILE_SUFFIXES:  # c.YAML: meant as a rule file, and easily missed if skipped
            problems.add(_File(len(files), relative, str(entry)), (), "rule files end in .yaml or .yml, in lower case; rename it")
    if len(files) - 1 > RULE_FILES_MAX:
        problems.add(
            _File(1, CAMPAIGNS_DIR, str(campaigns_dir)), (), f"holds {len(files) - 1} rule files; at most {RULE_FILES_MAX} are allowed"
        )
    return files


def _read_file(root: Path, file: _File, problems: _Problems) -> None:
    """Read one file's bytes and YAML, within the size limit."""
    if file.missing:
        return
    try:
        with (root / file.relative).open("rb") as stream:
            file.content = stream.read(RULE_FILE_BYTES_MAX + 1)
    except OSError as error:
        problems.add(file, (), f"cannot be read: {error.strerror or error}")
        return
    if len(file.content) > RULE_FILE_BYTES_MAX:
        problems.add(file, (), f"is larger than {RULE_FILE_BYTES_MAX} bytes")
        return
    try:
        text = file.content.decode("utf-8")
    except UnicodeDecodeError as error:
        line = file.content[: error.start].count(b"\n") + 1
        problems.add(file, (), "is not UTF-8 text", line=line)
        return
    try:
        file.document = _read_yaml(text)
    except _YamlRefused as refused:
        problems.add(file, (), refused.reason, line=refused.line)
        return
    for path, line, first_line in file.document.duplicate_keys:
        problems.add(file, path, f"duplicate key (first given on line {first_line})", line=line)
    if file.document.data is None:
        problems.add(file, (), "is empty", line=1)
        file.document = None


def _check_schema(file: _File, schema: Schema, problems: _Problems) -> None:
    """Validate one file's structure; on success keep the loaded data."""
    if file.document is None:
        return
    try:
        loaded = schema.load(file.document.data)
    except ValidationError as error:
        for path, message in _flatten_messages(error.messages):
            problems.add(file, path, message)
        return
    if problems.count_for(file) == 0:
        assert isinstance(loaded, dict)
        file.loaded = loaded


def _items(value: object, key: str) -> list[tuple[int, dict[str, Any]]]:
    """The mappings in `value[key]`, with their indexes; tolerant of any shape."""
    if not isinstance(value, dict):
        return []
    items = value.get(key)
    if not isinstance(items, list):
        return []
    return [(index, item) for index, item in enumerate(items) if isinstance(item, dict)]


def _text(value: object, key: str) -> str | None:
    found = value.get(key) if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def _benefit_kind(rule: dict[str, Any]) -> str | None:
    benefit = rule.get("benefit")
    if not isinstance(benefit, dict):
        return None
    kinds = [kind for kind in ("discount", "subsidy") if kind in benefit]
    return kinds[0] if len(kinds) == 1 else None


def _check_references(funders_file: _File, campaign_files: Sequence[_File], problems: _Problems) -> None:
    """Checks across fields and files, on the raw data so they run even where the structure is broken.

    Each check looks only at the parts it needs, and skips what it cannot read
    (the schema has already reported those), so a file's problems are all
    listed at once rather than one at a time.
    """
    funder_data = funders_file.document.data if funders_file.document is not None else None
    known_funders: dict[str, int] = {}
    for index, item in _items(funder_data, "funders"):
        funder_id = _text(item, "id")
        if funder_id is None:
            continue
        if funder_id in known_funders:
            first = known_funders[funder_id]
            problems.add(funders_file, ("funders", index, "id"), f"funder {funder_id!r} is already listed as funders[{first}]")
        else:
            known_funders[funder_id] = index
    funders_readable = funders_file.document is not None

    # Every campaign's id and rules (id → kind), for duplicate ids and example references.
    campaign_seen: dict[str, tuple[_File, int | None]] = {}
    rules_by_campaign: dict[str, dict[str, str | None]] = {}
    for file in campaign_files:
        if file.document is None:
            continue
        campaign = file.document.data.get("campaign") if isinstance(file.document.data, dict) else None
        campaign_id = _text(campaign, "id")
        if campaign_id is not None:
            if campaign_id in campaign_seen:
                first_file, first_line = campaign_seen[campaign_id]
                where = first_file.shown if first_line is None else f"{first_file.shown}:{first_line}"
                problems.add(file, ("campaign", "id"), f"campaign id {campaign_id!r} is already used in {where}")
            else:
                campaign_seen[campaign_id] = (file, file.document.line_of(("campaign", "id")))
                rules_by_campaign[campaign_id] = {}
        rule_ids: dict[str, int] = {}
        for index, rule in _items(campaign, "rules"):
            rule_id = _text(rule, "id")
            if rule_id is None:
                continue
            if rule_id in rule_ids:
                problems.add(file, ("campaign", "rules", index, "id"), f"rule id {rule_id!r} is already used by rules[{rule_ids[rule_id]}]")
                continue
            rule_ids[rule_id] = index
            if campaign_id is not None and campaign_seen[campaign_id][0] is file:
                rules_by_campaign[campaign_id][rule_id] = _benefit_kind(rule)

    for file in campaign_files:
        if file.document is None or not isinstance(file.document.data, dict):
            continue
        campaign = file.document.data.get("campaign")
        if not isinstance(campaign, dict):
            continue
        _check_funder_shares(file, campaign, known_funders if funders_readable else None, problems)
        _check_limits_given_once(file, ("campaign",), campaign, problems)
        for index, rule in _items(campaign, "rules"):
            _check_limits_given_once(file, ("campaign", "rules", index), rule, problems)
        campaign_id = _text(campaign, "id")
        for example_index, example in _items(campaign, "examples"):
            for expect_index, expected in _items(example, "expect"):
                _check_expected_rule(file, campaign_id, (example_index, expect_index), expected, rules_by_campaign, problems)


def _check_funder_shares(file: _File, campaign: dict[str, Any], known_funders: Mapping[str, int] | None, problems: _Problems) -> None:
    """Funders known to funders.yaml, each once, shares adding up to 100 %; subsidies need funders."""
    shares = _items(campaign, "funders")
    seen: dict[str, int] = {}
    for index, share in shares:
        funder_id = _text(share, "funder")
        if funder_id is None:
            continue
        if funder_id in seen:
            problems.add(
                file, ("campaign", "funders", index, "funder"), f"funder {funder_id!r} is already listed as funders[{seen[funder_id]}]"
            )
        seen.setdefault(funder_id, index)
        if known_funders is not None and funder_id not in known_funders:
            listed = ", ".join(sorted(known_funders)) or "none"
            problems.add(file, ("campaign", "funders", index, "funder"), f"unknown funder {funder_id!r} (funders.yaml lists: {listed})")
    raw_funders = campaign.get("funders")
    if isinstance(raw_funders, list) and raw_funders and len(shares) == len(raw_funders):
        shares_bp = [percent_to_bp(share.get("share_percent")) for _, share in shares]
        if all(share_bp is not None and 0 < share_bp <= BP_PER_WHOLE for share_bp in shares_bp):
            total_bp = sum(share_bp for share_bp in shares_bp if share_bp is not None)
            if total_bp != BP_PER_WHOLE:
                problems.add(file, ("campaign", "funders"), f"shares add up to {format_percent(total_bp)} %, not 100 %")
    if not raw_funders:
        subsidies = [
            _text(rule, "id") or f"rules[{index}]" for index, rule in _items(campaign, "rules") if _benefit_kind(rule) == "subsidy"
        ]
        if subsidies:
            problems.add(
                file,
                ("campaign", "funders"),
                f"missing: the campaign has subsidy rules ({', '.join(subsidies[:3])}), so it needs funders who pay them",
            )


def _check_limits_given_once(file: _File, path: DocPath, owner: dict[str, Any], problems: _Problems) -> None:
    """Each cap (subject, period, unit) at most once per rule or campaign.

    Two limits on the same counter would share one counter key, so each use
    would be counted twice and the tighter cap could be overrun.
    """
    seen: dict[tuple[str, str, str], int] = {}
    for index, limit in _items(owner, "limits"):
        per, period = _text(limit, "per"), _text(limit, "period")
        if per is None or period is None:
            continue
        for unit in ("uses_max", "fen_max"):
            if unit not in limit:
                continue
            if (per, period, unit) in seen:
                first = seen[(per, period, unit)]
                problems.add(
                    file, (*path, "limits", index), f"limits[{first}] already sets {unit} per {per} per {period}; give each cap once"
                )
            else:
                seen[(per, period, unit)] = index


def _check_expected_rule(
    file: _File,
    campaign_id: str | None,
    indexes: tuple[int, int],
    expected: dict[str, Any],
    rules_by_campaign: Mapping[str, Mapping[str, str | None]],
    problems: _Problems,
) -> None:
    """An example's expected benefit names a rule that exists and gives that kind of benefit."""
    reference = _text(expected, "rule")
    if reference is None or not _RULE_REF.fullmatch(reference):
        return
    path = ("campaign", "examples", indexes[0], "expect", indexes[1], "rule")
    target_campaign, _, rule_id = reference.rpartition("/")
    target_campaign = target_campaign or campaign_id or ""
    if target_campaign not in rules_by_campaign:
        problems.add(file, path, f"unknown campaign {target_campaign!r} in {reference!r}")
        return
    rules = rules_by_campaign[target_campaign]
    if rule_id not in rules:
        listed = ", ".join(sorted(rules)) or "none"
        problems.add(file, path, f"unknown rule {reference!r} (campaign {target_campaign} has: {listed})")
        return
    kind = rules[rule_id]
    for other in ("discount", "subsidy"):
        if f"{other}_fen" in expected and kind is not None and kind != other:
            problems.add(file, path, f"rule {reference!r} gives a {kind}, not a {other}")


# -- compiling ---------------------------------------------------------------------


def _frozen(values: list[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def _compile_limits(items: list[dict[str, Any]]) -> tuple[Limit, ...]:
    return tuple(Limit(item["per"], item["period"], item.get("uses_max"), item.get("fen_max")) for item in items)


def _compile_rule(campaign_id: str, data: dict[str, Any]) -> Rule:
    when = data.get("when", {})
    time_of_day = when.get("time_of_day", {})
    dates = when.get("dates", {})
    time_until = time_of_day.get("time_until")
    conditions = Conditions(
        categories=_frozen(when.get("categories")),
        merchant_ids=_frozen(when.get("merchant_ids")),
        districts=_frozen(when.get("districts")),
        member_groups=_frozen(when.get("member_groups")),
        weekdays=None if "weekdays" not in when else frozenset(WEEKDAYS.index(day) for day in when["weekdays"]),
        time_from=time_of_day.get("time_from"),
        time_until=None if time_until == time.max else time_until,  # '24:00': no upper bound
        date_from=dates.get("date_from"),
        date_until=dates.get("date_until"),
        amount_fen_min=when.get("amount_fen_min"),
    )
    ((kind, amount),) = data["benefit"].items()
    benefit = Benefit(kind, amount.get("percent_bp"), amount.get("fen_max"), amount.get("fixed_fen"))
    return Rule(
        campaign_id=campaign_id,
        rule_id=data["rule_id"],
        benefit=benefit,
        conditions=conditions,
        priority=data["priority"],
        exclusive=data["exclusive"],
        limits=_compile_limits(data["limits"]),
    )


def _compile_campaign(file: _File) -> tuple[Campaign, list[Example]]:
    """Turn one validated campaign file into its Campaign and Examples."""
    assert file.loaded is not None
    assert file.document is not None
    data = file.loaded["campaign"]
    campaign_id = data["campaign_id"]
    campaign = Campaign(
        campaign_id=campaign_id,
        name=data["name"],
        valid_from=data["valid"]["date_from"],
        valid_until=data["valid"]["date_until"],
        rules=tuple(_compile_rule(campaign_id, rule) for rule in data["rules"]),
        funders=tuple(FunderShare(share["funder"], share["share_bp"]) for share in data["funders"]),
        budget_fen=data.get("budget_fen"),
        limits=_compile_limits(data["limits"]),
        source=file.shown,
    )
    examples: list[Example] = []
    for index, example in enumerate(data["examples"]):
        swipe = example["swipe"]
        expected: list[tuple[str, str, int]] = []
        for item in example["expect"]:
            reference = item["rule"] if "/" in item["rule"] else f"{campaign_id}/{item['rule']}"
            kind = "discount" if "discount_fen" in item else "subsidy"
            expected.append((reference, kind, item[f"{kind}_fen"]))
        line = file.document.line_of(("campaign", "examples", index))
        examples.append(
            Example(
                source=f"{file.shown}:{line}",
                name=example["name"],
                amount_fen=swipe["amount_fen"],
                occurred_at=swipe["occurred_at"].isoformat(),
                merchant_id=swipe["merchant_id"],
                category=swipe["category"],
                district=swipe["district"],
                member_groups=frozenset(swipe["member_groups"]),
                expect_benefits=tuple(expected),
            )
        )
    return campaign, examples


# -- worked examples ---------------------------------------------------------------


def _show_benefits(benefits: Sequence[tuple[str, str, int]]) -> str:
    if not benefits:
        return "no benefit"
    return "[" + ", ".join(f"{reference} {kind} {amount_fen} fen" for reference, kind, amount_fen in benefits) + "]"


def run_examples(rulebook: Rulebook) -> list[str]:
    """Run every worked example on fresh, empty counters; return one message per failure (empty: all pass)."""
    failures: list[str] = []
    for example in rulebook.examples:
        heading = f"{example.source}: example {example.name!r}"
        try:
            occurred_at = datetime.fromisoformat(example.occurred_at)
        except ValueError:
            failures.append(f"{heading}: occurred_at {example.occurred_at!r} is not a date and time")
            continue
        if occurred_at.tzinfo is None:
            failures.append(f"{heading}: occurred_at {example.occurred_at!r} needs a UTC offset")
            continue
        swipe = Swipe(
            amount_fen=example.amount_fen,
            occurred_at=occurred_at,
            merchant_id=example.merchant_id,
            category=example.category,
            district=example.district,
            card_ref=EXAMPLE_CARD_REF,
            member_groups=example.member_groups,
        )
        plan = plan_swipe(rulebook, swipe)
        outcomes = execute_plan(plan, {})
        decision = decide(plan, outcomes, rulebook.version, with_explanations=True)
        got = tuple((f"{line.campaign_id}/{line.rule_id}", line.kind, line.amount_fen) for line in decision.benefits)
        if got == example.expect_benefits:
            continue
        message = f"{heading}: expected {_show_benefits(example.expect_benefits)}, got {_show_benefits(got)}"
        # Say why each expected rule that gave nothing did not apply: that is what an author needs next.
        given = {reference for reference, _, _ in got}
        reasons = {
            f"{line.campaign_id}/{line.rule_id}": line.reason or line.outcome
            for line in decision.explanations
            if line.outcome == "not_applied"
        }
        missing = [
            f"{reference}: {reasons.get(reference, 'not indexed for this merchant, category and district')}"
            for reference, _, _ in example.expect_benefits
            if reference not in given
        ]
        if missing:
            message += " (" + "; ".join(missing) + ")"
        failures.append(message)
    return failures
