"""Bulk CSV imports of members (with their cards) and merchants (with their terminals).

Every line is checked before anything is written: a file with any bad line is
refused whole, with each bad line's number, column and reason.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from pos_engine.domain.registry import CARD_STATUSES, MERCHANT_STATUSES, REGISTRY_ID_HINT, card_hash, is_registry_id
from pos_engine.domain.rulebook import CATEGORIES, DISTRICTS, ID_HINT, ID_PATTERN, MERCHANT_ID_HINT, MERCHANT_ID_PATTERN
from pos_engine.limits import CARD_NUMBER_DIGITS_MAX, CARD_NUMBER_DIGITS_MIN, IMPORT_BYTES_MAX, IMPORT_ROWS_MAX
from pos_engine.store.db import Database
from pos_engine.store.models import CardRow, MemberRow, MerchantRow, TerminalRow

MEMBER_COLUMNS = (
    "member_id",
    "name",
    "unit_id",
    "union_id",
    "district",
    "groups",
    "in_service",
    "annual_review_year",
    "card_number",
    "card_status",
)
MERCHANT_COLUMNS = ("merchant_id", "name", "category", "district", "status", "terminal_id")
IMPORT_BATCH_ROWS = 1_000
NAME_CHARS_MAX = 200
GROUPS_CHARS_MAX = 500  # members.groups, the names joined by ','


class ImportError_(Exception):
    """A file that was refused: every problem, each naming its line and column."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class ImportResult:
    rows: int
    new_terminal_secrets: dict[str, str] = field(default_factory=dict)
    # Cards that another member held before this import, one line each, naming the file's line.
    moved_cards: list[str] = field(default_factory=list)


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _read_text(path: Path) -> str:
    """The file as text; a refusal names the line of the first byte that is not UTF-8."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise ImportError_([f"{path}: cannot read: {error.strerror}"]) from error
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):  # a file, or a pipe (`<(zcat members.csv.gz)`); never a device
        raise ImportError_([f"{path}: not a regular file or a pipe"])
    try:
        with path.open("rb") as file:
            data = file.read(IMPORT_BYTES_MAX + 1)
    except OSError as error:
        raise ImportError_([f"{path}: cannot read: {error.strerror}"]) from error
    if len(data) > IMPORT_BYTES_MAX:
        raise ImportError_([f"{path}: larger than {IMPORT_BYTES_MAX:,} bytes"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_ends = list(_LINE_END.finditer(data, 0, error.start))  # \r\n, \r or \n, as the reader below takes them
        line = len(line_ends) + 1
        column = error.start - (line_ends[-1].end() if line_ends else 0) + 1
        raise ImportError_(
            [f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x} at byte {column} of the line); save the file as UTF-8"]
        ) from error


def _read(path: Path, columns: tuple[str, ...], optional: set[str]) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    text = _read_text(path)
    # newline=None reads \r, \r\n and \n line ends alike (old Mac and Windows exports);
    # strict: a quote inside an unquoted field, or text after a closing quote, is an error, not glued on.
    reader = csv.reader(io.StringIO(text, newline=None), strict=True)
    try:
        header = next((fields for fields in reader if fields), [])
    except csv.Error as error:
        raise ImportError_([f"{path}:{reader.line_num}: {error}"]) from error
    header_line = reader.line_num
    missing = [column for column in columns if column not in header and column not in optional]
    unknown = [column for column in header if column not in columns]
    repeated = sorted({column for column in header if header.count(column) > 1})
    problems = []
    if missing:
        problems.append(f"{path}:{header_line or 1}: missing columns: {', '.join(missing)}")
    if unknown:
        problems.append(f"{path}:{header_line}: unknown columns: {', '.join(unknown)}")
    if repeated:
        problems.append(f"{path}:{header_line}: columns given more than once: {', '.join(repeated)}")
    if problems:
        raise ImportError_(problems)
    rows: list[tuple[int, dict[str, str]]] = []
    record_start = reader.line_num + 1  # a quoted field may run over several lines: a record is named by its first
    try:
        for fields in reader:
            if not fields:  # a blank line
                record_start = reader.line_num + 1
                continue
            if len(rows) >= IMPORT_ROWS_MAX:
                raise ImportError_([f"{path}: more than {IMPORT_ROWS_MAX} rows"])
            if len(fields) > len(header):
                problems.append(f"{path}:{record_start}: more fields than columns")
            else:
                fields += [""] * (len(header) - len(fields))
                rows.append((record_start, {name: value.strip() for name, value in zip(header, fields, strict=True)}))
            record_start = reader.line_num + 1
    except csv.Error as error:
        raise ImportError_([f"{path}:{record_start}: {error} (in the record that starts on this line)"]) from error
    if not rows and not problems:
        problems.append(f"{path}: no rows")
    return rows, problems


def _check(problems: list[str], where: str, column: str, ok: bool, reason: str) -> None:
    if not ok:
        problems.append(f"{where}: {column}: {reason}")


def _is_name(value: str) -> bool:
    # Printable only: a NUL would be refused by PostgreSQL mid-import, a control character garbles statements.
    return 0 < len(value) <= NAME_CHARS_MAX and value.isprintable()


def _upsert(database: Database, model: Any, rows: list[dict[str, Any]], keys: list[str], session: Any, kept: tuple[str, ...] = ()) -> None:
    """Insert `rows`, or update the row with the same `keys`: every column but the keys and `kept`."""
    insert = pg_insert if database.is_postgresql else sqlite_insert
    for start in range(0, len(rows), IMPORT_BATCH_ROWS):
        batch = rows[start : start + IMPORT_BATCH_ROWS]
        statement = insert(model).values(batch)
        updates = {column: statement.excluded[column] for column in batch[0] if column not in keys and column not in kept}
        session.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates))


def _duplicates(rows: Iterable[tuple[int, str]], path: Path, column: str) -> list[str]:
    first_line: dict[str, int] = {}
    problems = []
    for line, value in rows:
        if value in first_line:
            problems.append(f"{path}:{line}: {column}: {value!r} already on line {first_line[value]}")
        else:
            first_line[value] = line
    return problems


def import_members(database: Database, card_key: bytes, path: Path) -> ImportResult:
    """Insert or update members and their cards from a CSV file; all lines or none."""
    rows, problems = _read(path, MEMBER_COLUMNS, optional={"groups"})
    members, cards = [], []
    card_lines: dict[str, int] = {}
    for line, row in rows:
        where, problems_before = f"{path}:{line}", len(problems)
        _check(problems, where, "member_id", is_registry_id(row["member_id"]), REGISTRY_ID_HINT)
        _check(problems, where, "name", _is_name(row["name"]), f"required, at most {NAME_CHARS_MAX} printable characters")
        _check(problems, where, "unit_id", is_registry_id(row["unit_id"]), REGISTRY_ID_HINT)
        _check(problems, where, "union_id", is_registry_id(row["union_id"]), REGISTRY_ID_HINT)
        _check(problems, where, "district", row["district"] in DISTRICTS, f"one of {', '.join(DISTRICTS)}")
        _check(problems, where, "in_service", row["in_service"] in ("true", "false"), "true or false")
        year = row["annual_review_year"]
        year_ok = year == "" or (year.isascii() and year.isdigit() and 2000 <= int(year) <= 2100)  # isdigit alone takes '²'
        _check(problems, where, "annual_review_year", year_ok, "a year or empty")
        number = row["card_number"]
        _check(
            problems,
            where,
            "card_number",
            number.isascii() and number.isdigit() and CARD_NUMBER_DIGITS_MIN <= len(number) <= CARD_NUMBER_DIGITS_MAX,
            f"{CARD_NUMBER_DIGITS_MIN}-{CARD_NUMBER_DIGITS_MAX} digits",
        )
        _check(problems, where, "card_status", row["card_status"] in CARD_STATUSES, f"one of {', '.join(CARD_STATUSES)}")
        groups = [group.strip() for group in row.get("groups", "").split(";") if group.strip()]
        _check(
            problems,
            where,
            "groups",
            all(ID_PATTERN.fullmatch(group) for group in groups),
            f"names separated by ';', each of {ID_HINT} (as rules name them)",
        )
        _check(problems, where, "groups", len(",".join(groups)) <= GROUPS_CHARS_MAX, f"at most {GROUPS_CHARS_MAX} characters in all")
        if len(problems) > problems_before:
            continue
        hashed = card_hash(card_key, number)
        members.append(
            {
                "member_id": row["member_id"],
                "name": row["name"],
                "unit_id": row["unit_id"],
                "union_id": row["union_id"],
                "district": row["district"],
                "groups": ",".join(groups),
                "in_service": row["in_service"] == "true",
                "annual_review_year": int(year) if year else None,
            }
        )
        card_lines[hashed] = line
        cards.append(
            {
                "card_id": "card-" + hashed[:24],
                "card_hash": hashed,
                "last4": number[-4:],
                "member_id": row["member_id"],
                "status": row["card_status"],
            }
        )
    problems += _duplicates(((line, row["member_id"]) for line, row in rows), path, "member_id")
    problems += _duplicates(((line, row["card_number"]) for line, row in rows), path, "card_number")
    if problems:
        raise ImportError_(problems)
    moved: list[tuple[int, str]] = []
    with database.sessions() as session, session.begin():
        for start in range(0, len(cards), IMPORT_BATCH_ROWS):
            batch = {card["card_hash"]: card for card in cards[start : start + IMPORT_BATCH_ROWS]}
            held = session.execute(select(CardRow.card_hash, CardRow.member_id).where(CardRow.card_hash.in_(list(batch))))
            for hashed, member_id in held:
                card = batch[hashed]
                if member_id != card["member_id"]:
                    line = card_lines[hashed]
                    moved.append((line, f"{path}:{line}: card ending {card['last4']} moved from member {member_id} to {card['member_id']}"))
        _upsert(database, MemberRow, members, ["member_id"], session)
        # A card is its number: one loaded otherwise (the demo's, an earlier import's) keeps its id, which the ledger uses.
        _upsert(database, CardRow, cards, ["card_hash"], session, kept=("card_id",))
    return ImportResult(rows=len(members), moved_cards=[text for _line, text in sorted(moved)])


def import_merchants(
    database: Database,
    path: Path,
    make_secret: Callable[[], str] = lambda: secrets.token_hex(24),
    deliver_secrets: Callable[[dict[str, str]], None] | None = None,
) -> ImportResult:
    """Insert or update merchants (and create their terminals) from a CSV file; all lines or none.

    New terminals' secrets exist only in this import's answer: `deliver_secrets`, if given, gets them
    before anything is committed, and if it raises (ImportError_ or OSError), nothing is imported.
    """
    rows, problems = _read(path, MERCHANT_COLUMNS, optional={"terminal_id"})
    merchants, terminal_rows = [], []
    for line, row in rows:
        where, problems_before = f"{path}:{line}", len(problems)
        _check(problems, where, "merchant_id", MERCHANT_ID_PATTERN.fullmatch(row["merchant_id"]) is not None, MERCHANT_ID_HINT)
        _check(problems, where, "name", _is_name(row["name"]), f"required, at most {NAME_CHARS_MAX} printable characters")
        _check(problems, where, "category", row["category"] in CATEGORIES, f"one of {', '.join(CATEGORIES)}")
        _check(problems, where, "district", row["district"] in DISTRICTS, f"one of {', '.join(DISTRICTS)}")
        _check(problems, where, "status", row["status"] in MERCHANT_STATUSES, f"one of {', '.join(MERCHANT_STATUSES)}")
        terminal_id = row.get("terminal_id", "")
        _check(problems, where, "terminal_id", terminal_id == "" or is_registry_id(terminal_id), REGISTRY_ID_HINT)
        if len(problems) > problems_before:
            continue
        merchants.append({key: row[key] for key in ("merchant_id", "name", "category", "district", "status")})
        if terminal_id:
            terminal_rows.append((line, terminal_id, row["merchant_id"]))
    problems += _duplicates(((line, row["merchant_id"]) for line, row in rows), path, "merchant_id")
    problems += _duplicates(((line, row["terminal_id"]) for line, row in rows if row.get("terminal_id")), path, "terminal_id")
    if problems:
        raise ImportError_(problems)
    result = ImportResult(rows=len(merchants))
    with database.sessions() as session, session.begin():
        _upsert(database, MerchantRow, merchants, ["merchant_id"], session)
        bound_elsewhere = []
        for line, terminal_id, merchant_id in terminal_rows:
            existing = session.get(TerminalRow, terminal_id)
            if existing is None:
                secret = make_secret()
                session.add(TerminalRow(terminal_id=terminal_id, merchant_id=merchant_id, secret=secret, status="active"))
                result.new_terminal_secrets[terminal_id] = secret
            elif existing.merchant_id != merchant_id:
                bound_elsewhere.append(f"{path}:{line}: terminal_id: {terminal_id!r} is bound to merchant {existing.merchant_id!r}")
        if bound_elsewhere:
            raise ImportError_(bound_elsewhere)
        if result.new_terminal_secrets and deliver_secrets is not None:
            session.flush()  # the rows are sound before their secrets go anywhere
            deliver_secrets(result.new_terminal_secrets)
    return result
