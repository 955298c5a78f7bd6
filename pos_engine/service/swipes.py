"""Use cases of the terminal API: authorise, reverse, refund, void by request id, look up."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, TypeVar

from pos_engine.domain.evaluation import (
    DECLINE_CARD_UNKNOWN,
    DECLINE_MERCHANT_INACTIVE,
    DECLINE_VOIDED_BY_TERMINAL,
    Decision,
    Plan,
    Swipe,
    decide,
    execute_plan,
    plan_swipe,
)
from pos_engine.domain.ledger import benefit_lines, claw_back
from pos_engine.domain.registry import Terminal, card_decline, merchant_decline
from pos_engine.limits import ID_CHARS_MAX, IDEMPOTENCY_WAIT_S_MAX, OCCURRED_AT_AHEAD_S_MAX, OCCURRED_AT_BEHIND_S_MAX
from pos_engine.service import responses
from pos_engine.service.context import EngineContext
from pos_engine.service.errors import (
    AlreadyClaimed,
    Conflict,
    DuplicateKey,
    Forbidden,
    HoldExpired,
    NotFound,
    OutcomeUnknown,
    Unprocessable,
)
from pos_engine.service.ports import Claim, SwipeUnitOfWork, UnitOfWork

log = logging.getLogger(__name__)

# The request hash of a record that voids a request the engine never saw (POST /v1/reversals):
# a late original finds it and gets the voided answer, whatever its body.
VOID_REQUEST_HASH = "void"
DUPLICATE_ATTEMPTS_MAX = 3
_ID_SHAPE = re.compile(rf"[A-Za-z0-9_]{{1,{ID_CHARS_MAX}}}")

T = TypeVar("T")


@dataclass(frozen=True)
class AuthorisationRequest:
    """A parsed, validated POST /v1/authorisations body."""

    request_id: str
    card_number: str
    merchant_id: str
    amount_fen: int
    occurred_at: datetime


@dataclass(frozen=True)
class StoredResponse:
    """An answer as the terminal gets it, byte for byte."""

    status_code: int
    body: bytes


def new_id(prefix: str) -> str:
    """A time-ordered, unguessable id: prefix, milliseconds in hex, 64 random bits."""
    return f"{prefix}_{int(time.time() * 1000):011x}{secrets.token_hex(8)}"


def _check_id_shape(authorisation_id: str) -> None:
    """An id the engine cannot have given (new_id's letters, digits and '_') is not found, before any database sees it.

    PostgreSQL refuses a NUL in a text parameter outright; any other stranger is simply not there.
    """
    if _ID_SHAPE.fullmatch(authorisation_id) is None:
        raise NotFound("not_found", f"no authorisation {authorisation_id!r}")


def _replay(record: Any, request_hash: str, *, authorisation: bool = False) -> StoredResponse:
    """The stored answer to a repeated request; 409 idempotency_conflict if the request id answered another request.

    A void recorded for a request id the engine never saw (VOID_REQUEST_HASH) answers a late
    authorisation under that id, whatever its body, and nothing else: a reversal or a refund
    under that id is another request.
    """
    accepted = (request_hash, VOID_REQUEST_HASH) if authorisation else (request_hash,)
    if record.request_hash not in accepted:
        raise Conflict(
            "idempotency_conflict",
            f"request_id {record.request_id!r} was already used by this terminal for a different request",
        )
    return StoredResponse(record.status_code, bytes(record.response_body))


def _in_transaction(ctx: EngineContext, work: Callable[[UnitOfWork], T]) -> T:
    """Run `work` in a unit of work; on a concurrent duplicate, run it again (it then replays)."""
    for _attempt in range(DUPLICATE_ATTEMPTS_MAX):
        try:
            with ctx.unit_of_work() as uow:
                return work(uow)
        except DuplicateKey:
            log.info("concurrent duplicate request; replaying the stored answer")
            continue
    raise Conflict("request_in_progress", "the same request is being processed; retry with the same request_id")


def _check_occurred_at(ctx: EngineContext, occurred_at: datetime) -> None:
    now = ctx.clock.now()
    if occurred_at > now + timedelta(seconds=OCCURRED_AT_AHEAD_S_MAX):
        raise Unprocessable(
            "occurred_at_out_of_window",
            f"occurred_at is more than {OCCURRED_AT_AHEAD_S_MAX} s ahead of the engine's clock",
            {"occurred_at": ["too far in the future"]},
        )
    if occurred_at < now - timedelta(seconds=OCCURRED_AT_BEHIND_S_MAX):
        raise Unprocessable(
            "occurred_at_out_of_window",
            f"occurred_at is more than {OCCURRED_AT_BEHIND_S_MAX} s behind the engine's clock",
            {"occurred_at": ["too far in the past"]},
        )


def authorise(
    ctx: EngineContext, terminal: Terminal, request: AuthorisationRequest, request_hash: str, explain: bool = False
) -> StoredResponse:
    """Decide a swipe, reserve its caps, record it, and answer; a retry gets the same answer.

    Raises:
        Forbidden: the terminal acts for another merchant.
        Unprocessable: occurred_at is outside the accepted window.
        Conflict: the request id was used for a different request.
    """
    if request.merchant_id != terminal.merchant_id:
        raise Forbidden("merchant_mismatch", "this terminal may only act for its own merchant", {"merchant_id": ["not this terminal's"]})
    try:
        _check_occurred_at(ctx, request.occurred_at)
    except Unprocessable:
        # The idempotency step comes first: a retry of a swipe recorded while it was inside the
        # window (a till resending an offline swipe near the 24 h edge) gets the stored answer.
        stored = _stored_answer(ctx, terminal.terminal_id, request.request_id)
        if stored is None:
            raise
        return _replay(stored, request_hash, authorisation=True)
    rulebook = ctx.rulebook
    merchant = ctx.merchant(request.merchant_id)
    holder = ctx.card_holder(ctx.card_hash(request.card_number))
    # A terminal bound to a merchant missing from the registry is treated like an inactive merchant.
    decline_code = DECLINE_MERCHANT_INACTIVE if merchant is None else merchant_decline(merchant)
    if decline_code is None:
        decline_code = DECLINE_CARD_UNKNOWN if holder is None else card_decline(holder, request.occurred_at)
    plan: Plan | None = None
    if decline_code is None:
        assert holder is not None
        assert merchant is not None
        swipe = Swipe(
            amount_fen=request.amount_fen,
            occurred_at=request.occurred_at,
            merchant_id=merchant.merchant_id,
            category=merchant.category,
            district=merchant.district,
            card_ref=holder.card_id,
            member_groups=holder.member_groups,
        )
        plan = plan_swipe(rulebook, swipe)
    card_last4 = request.card_number[-4:]
    reserved: dict[str, Mapping[str, int]] = {}
    # No idempotency read first: the unique key on (terminal, request id) refuses a repeat,
    # which then gets the stored answer. The SQL counter store's reservation rolls back with
    # the refused insert; Redis claims the request in its reservation script, so a repeat
    # never holds caps even for a moment, and the unique key catches what gets past a claim
    # (a void recorded first, a claim that expired, a first attempt that reserved nothing and
    # so took no claim, with a repeat that reserves because the rulebook changed in between).
    transactional = ctx.counters.transactional
    claimed: list[Claim] = []  # this attempt's claim once it asked for one: a failure drops it, if it is still ours

    def give_back() -> None:
        deltas = reserved.pop("deltas", None)
        if deltas and not transactional:
            ctx.counters.apply({key: -value for key, value in deltas.items()})

    def work(uow: SwipeUnitOfWork) -> StoredResponse:
        recorded_at = ctx.clock.now()
        swipe_id = new_id("au")  # the entry's or the decline's id, and the token of this attempt's claim
        if plan is None:
            assert decline_code is not None
            decision = Decision.decline(decline_code, request.amount_fen, rulebook.version)
        elif not any(step.counters for step in plan.steps):
            # No cap or budget to reserve (no rule matched, or only uncapped ones): no counter store call
            # and no claim. A repeat gets past to the record, whose unique key refuses it: it then replays.
            decision = decide(plan, execute_plan(plan, {}), rulebook.version, with_explanations=explain)
        else:
            claim = None if transactional else Claim(f"{terminal.terminal_id}:{request.request_id}", swipe_id)
            if claim is not None:
                claimed.append(claim)
            outcomes = ctx.counters.reserve(plan, uow.session, claim=claim)
            decision = decide(plan, outcomes, rulebook.version, with_explanations=explain)
            if decision.counter_deltas:
                reserved["deltas"] = decision.counter_deltas
        explanations = decision.explanations if explain else None
        if decision.status == "approved":
            assert plan is not None
            assert holder is not None
            entry_id = swipe_id
            fields: dict[str, Any] = {
                "entry_id": entry_id,
                "kind": "authorisation",
                "authorisation_id": entry_id,
                "terminal_id": terminal.terminal_id,
                "request_id": request.request_id,
                "merchant_id": request.merchant_id,
                "card_id": holder.card_id,
                "card_last4": card_last4,
                "amount_fen": decision.amount_fen,
                "discount_fen": decision.discount_fen,
                "subsidy_fen": decision.subsidy_fen,
                "payable_fen": decision.payable_fen,
                "occurred_at": request.occurred_at,
                "recorded_at": recorded_at,
                "rules_version": decision.rules_version,
                "benefits": benefit_lines(plan, decision, rulebook),
                "counter_deltas": dict(decision.counter_deltas or {}),
            }
            table, body = "ledger_entries", responses.encode(responses.authorisation_body(SimpleNamespace(**fields), explanations))
        else:
            fields = {
                "decline_id": swipe_id,
                "terminal_id": terminal.terminal_id,
                "request_id": request.request_id,
                "merchant_id": request.merchant_id,
                "card_last4": card_last4,
                "decline_code": decision.decline_code,
                "amount_fen": request.amount_fen,
                "occurred_at": request.occurred_at,
                "recorded_at": recorded_at,
                "rules_version": decision.rules_version,
            }
            table, body = "declines", responses.encode(responses.decline_body(SimpleNamespace(**fields), explanations))
        resource_id = fields.get("entry_id") or fields["decline_id"]
        uow.repo.record(table, fields, _idempotency(terminal.terminal_id, request.request_id, request_hash, body, resource_id, recorded_at))
        uow.commit()
        reserved.clear()  # recorded: the caps stay taken
        return StoredResponse(200, body)

    try:
        # With Redis counters nothing else is written in the transaction: one statement records the swipe.
        with ctx.swipe_work() as uow:
            return work(uow)
    except (DuplicateKey, AlreadyClaimed):
        # This attempt's caps, if it reserved any. A claim it found taken stays with its holder; one it took
        # itself (the first attempt had taken none, or its claim had expired) stays its 30 s, and a later
        # repeat waits for the record and replays it.
        give_back()
        return _replay(_wait_for_record(ctx, terminal.terminal_id, request.request_id), request_hash, authorisation=True)
    except OutcomeUnknown:
        # The record was sent, its answer lost, and the store could not tell whether it committed.
        # Keep its caps: counters may run ahead of the ledger, never behind it (`counters reconcile`
        # shows it). Drop the claim so that the terminal's retry swipes afresh: if this attempt did
        # commit, the retry's record is a duplicate, gives its own caps back, and replays this one.
        reserved.clear()
        for held in claimed:
            ctx.counters.unclaim(held, outcome_unknown=True)
        raise
    except Exception:
        try:
            give_back()
        finally:  # even if the give-back failed (counters then run ahead of the ledger: the safe side)
            for held in claimed:
                ctx.counters.unclaim(held)  # let the terminal's retry reserve again
        raise
    except BaseException:
        # The worker is being stopped (a sync worker's SystemExit on SIGQUIT or its timeout), perhaps with
        # the record on its way to the database, where it may still commit: keep the caps, as when the
        # record's outcome is unknown, and drop the claim if Redis can still be told.
        reserved.clear()
        for held in claimed:
            try:
                ctx.counters.unclaim(held, outcome_unknown=True)
            except Exception:
                log.warning("could not drop the claim of request %s while stopping", held.request, exc_info=True)
        raise


def _stored_answer(ctx: EngineContext, terminal_id: str, request_id: str) -> Any:
    """The request's idempotency record, or None."""
    with ctx.single_statement_work() as uow:
        return uow.repo.idempotency(terminal_id, request_id)


def _wait_for_record(ctx: EngineContext, terminal_id: str, request_id: str) -> Any:
    """The stored answer to a request another worker is recording; 409 request_in_progress if it does not come."""
    deadline = time.monotonic() + IDEMPOTENCY_WAIT_S_MAX
    delay_s = 0.002
    while True:
        stored = _stored_answer(ctx, terminal_id, request_id)
        if stored is not None:
            return stored
        if time.monotonic() >= deadline:
            raise Conflict("request_in_progress", "the same request is being processed; retry with the same request_id")
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, 0.1)


def _idempotency(
    terminal_id: str, request_id: str, request_hash: str, body: bytes, resource_id: str | None, at: datetime
) -> dict[str, Any]:
    return {
        "terminal_id": terminal_id,
        "request_id": request_id,
        "request_hash": request_hash,
        "status_code": 200,
        "response_body": body,
        "resource_id": resource_id,
        "created_at": at,
    }


def _adjust(
    ctx: EngineContext, uow: UnitOfWork, terminal: Terminal, auth: Any, kind: str, request_id: str, amount_fen: int | None
) -> tuple[Any, dict[str, int]]:
    """Append a reversal or refund of `auth` inside `uow`; return the entry and its counter deltas."""
    if auth.merchant_id != terminal.merchant_id:
        raise Forbidden("merchant_mismatch", "this authorisation belongs to another merchant")
    adjustments = uow.repo.adjustments(auth.entry_id)
    if any(entry.kind == "reversal" for entry in adjustments):
        raise Conflict("already_reversed", f"authorisation {auth.entry_id} is already reversed")
    given_back_before = -sum(entry.amount_fen for entry in adjustments)
    remaining = auth.amount_fen - given_back_before
    if kind == "reversal":
        if remaining == 0:
            raise Conflict("fully_refunded", f"authorisation {auth.entry_id} is already fully refunded")
        amount_fen = remaining
    else:
        assert amount_fen is not None
        if amount_fen > remaining:
            raise Unprocessable(
                "refund_exceeds_remaining",
                f"refund of {amount_fen} fen exceeds the {remaining} fen not yet refunded",
                {"amount_fen": [f"at most {remaining}"]},
            )
    back = claw_back(auth.amount_fen, auth.payable_fen, auth.benefits, given_back_before, amount_fen)
    now = ctx.clock.now()
    entry = uow.repo.add_entry(
        entry_id=new_id("rv" if kind == "reversal" else "rf"),
        kind=kind,
        authorisation_id=auth.entry_id,
        terminal_id=terminal.terminal_id,
        request_id=request_id,
        merchant_id=auth.merchant_id,
        card_id=auth.card_id,
        card_last4=auth.card_last4,
        amount_fen=-amount_fen,
        discount_fen=-back.discount_fen,
        subsidy_fen=-back.subsidy_fen,
        payable_fen=-back.payable_fen,
        occurred_at=now,
        recorded_at=now,
        rules_version=auth.rules_version,
        benefits=back.lines,
        counter_deltas=back.counter_deltas,
    )
    deltas = back.counter_deltas
    if ctx.counters.transactional:
        ctx.counters.apply(deltas, uow.session)
    return entry, deltas


def _hold_give_back(ctx: EngineContext, deltas: Mapping[str, int]) -> str | None:
    """Before an adjustment commits, tell a non-transactional store that caps come back just after; the note's token.

    The note holds off `counters rebuild` (Redis), which would otherwise count the adjustment once from
    the ledger and once more when its give-back lands after the rebuild's write. If the store cannot be
    told, the adjustment goes on without it (a rebuild meanwhile is all that it risks), as it goes on
    when the give-back itself fails.
    """
    if not deltas or ctx.counters.transactional:
        return None
    token = new_id("gb")
    try:
        ctx.counters.hold_give_back(token)
    except Exception:
        log.warning("could not note a give-back before its commit; a `counters rebuild` meanwhile may miss it", exc_info=True)
        return None
    return token


def _give_back_after_commit(ctx: EngineContext, deltas: Mapping[str, int], hold: str | None = None) -> None:
    """Give caps back in a non-transactional store once the ledger holds the adjustment, and drop its note.

    If this fails the counters stay above the ledger: the safe direction (no cap
    is ever exceeded), and `pos-engine counters reconcile` shows the difference;
    the note expires by itself.
    """
    if deltas and not ctx.counters.transactional:  # a hold is taken only with deltas to give back
        try:
            ctx.counters.apply(deltas, hold=hold)
        except HoldExpired:
            log.warning(
                "a give-back came after its note had expired, so it gave nothing back: counters stay above the ledger"
                " until `pos-engine counters rebuild`"
            )
        except Exception:
            log.exception("counter give-back failed; run `pos-engine counters reconcile`")


def adjust(
    ctx: EngineContext,
    terminal: Terminal,
    authorisation_id: str,
    kind: str,
    request_id: str,
    request_hash: str,
    amount_fen: int | None = None,
) -> StoredResponse:
    """Reverse (kind='reversal') or refund (kind='refund') an approved authorisation.

    Raises:
        NotFound: no such authorisation.
        Forbidden: it belongs to another merchant.
        Conflict: already reversed, fully refunded, a decline, or the request id was reused.
        Unprocessable: a refund larger than what is not yet refunded.
    """
    _check_id_shape(authorisation_id)
    done: dict[str, Any] = {}

    def work(uow: UnitOfWork) -> StoredResponse:
        # The lock first, then the stored answer: a retry that waited on the lock behind its first attempt
        # (PostgreSQL; SQLite runs one write transaction at a time) must find that attempt's answer, not
        # be refused by what the attempt changed (already reversed, refund over what is left).
        auth = uow.repo.authorisation(authorisation_id, lock=True)
        stored = uow.repo.idempotency(terminal.terminal_id, request_id)
        if stored is not None:
            return _replay(stored, request_hash)
        if auth is None:
            decline = uow.repo.decline(authorisation_id)
            if decline is not None and decline.merchant_id == terminal.merchant_id:
                raise Conflict("authorisation_declined", f"authorisation {authorisation_id} was declined: nothing to give back")
            raise NotFound("not_found", f"no authorisation {authorisation_id}")
        entry, deltas = _adjust(ctx, uow, terminal, auth, kind, request_id, amount_fen)
        body = responses.encode(responses.adjustment_body(entry))
        uow.repo.add_idempotency(terminal.terminal_id, request_id, request_hash, 200, body, entry.entry_id, entry.recorded_at)
        hold = _hold_give_back(ctx, deltas)
        uow.commit()
        done["deltas"], done["hold"] = deltas, hold
        return StoredResponse(200, body)

    response = _in_transaction(ctx, work)
    _give_back_after_commit(ctx, done.get("deltas", {}), done.get("hold"))
    return response


def reverse_request(ctx: EngineContext, terminal: Terminal, request_id: str, original_request_id: str, request_hash: str) -> StoredResponse:
    """Void whatever `original_request_id` did; harmless if it did nothing, and it stops a late original."""
    done: dict[str, Any] = {}

    def work(uow: UnitOfWork) -> StoredResponse:
        done.clear()  # an attempt rolled back (a concurrent duplicate) gave nothing back
        stored = uow.repo.idempotency(terminal.terminal_id, request_id)
        if stored is not None:
            return _replay(stored, request_hash)
        now = ctx.clock.now()
        original = uow.repo.idempotency(terminal.terminal_id, original_request_id)
        outcome, authorisation_id, reversal = "nothing_to_reverse", None, None
        if original is None:
            # The original never arrived (or is still on its way): record it as void, so that
            # if it arrives later it is declined and no subsidy is paid for a swipe the till never saw.
            void_fields: dict[str, Any] = {
                "decline_id": new_id("au"),
                "terminal_id": terminal.terminal_id,
                "request_id": original_request_id,
                "merchant_id": terminal.merchant_id,
                "card_last4": "",
                "decline_code": DECLINE_VOIDED_BY_TERMINAL,
                "amount_fen": 0,
                "occurred_at": now,
                "recorded_at": now,
                "rules_version": ctx.rulebook.version,
            }
            uow.repo.add_decline(**void_fields)
            void_body = responses.encode(responses.decline_body(SimpleNamespace(**void_fields)))
            uow.repo.add_idempotency(
                terminal.terminal_id, original_request_id, VOID_REQUEST_HASH, 200, void_body, void_fields["decline_id"], now
            )
        elif original.resource_id is not None:
            auth = uow.repo.authorisation(original.resource_id, lock=True)
            if auth is not None:
                authorisation_id = auth.entry_id
                if any(entry.kind == "reversal" for entry in uow.repo.adjustments(auth.entry_id)):
                    outcome = "already_reversed"
                else:
                    try:
                        entry, deltas = _adjust(ctx, uow, terminal, auth, "reversal", request_id, None)
                    except Conflict:  # fully refunded already: nothing left to void
                        pass
                    else:
                        outcome, reversal = "reversed", responses.adjustment_body(entry)
                        done["deltas"] = deltas
        body = responses.encode(
            {
                "original_request_id": original_request_id,
                "outcome": outcome,
                "authorisation_id": authorisation_id,
                "reversal": reversal,
            }
        )
        uow.repo.add_idempotency(terminal.terminal_id, request_id, request_hash, 200, body, authorisation_id, now)
        done["hold"] = _hold_give_back(ctx, done.get("deltas", {}))
        uow.commit()
        return StoredResponse(200, body)

    response = _in_transaction(ctx, work)
    _give_back_after_commit(ctx, done.get("deltas", {}), done.get("hold"))
    return response


def get_authorisation(ctx: EngineContext, terminal: Terminal, authorisation_id: str) -> dict[str, Any]:
    """An authorisation as it stands now, with its reversals and refunds."""
    _check_id_shape(authorisation_id)
    with ctx.unit_of_work() as uow:
        auth = uow.repo.authorisation(authorisation_id)
        if auth is None:
            decline = uow.repo.decline(authorisation_id)
            if decline is None:
                raise NotFound("not_found", f"no authorisation {authorisation_id}")
            if decline.merchant_id != terminal.merchant_id:
                raise Forbidden("merchant_mismatch", "this authorisation belongs to another merchant")
            return {**responses.decline_body(decline), "reversed": False, "refunded_fen": 0, "adjustments": []}
        if auth.merchant_id != terminal.merchant_id:
            raise Forbidden("merchant_mismatch", "this authorisation belongs to another merchant")
        adjustments = uow.repo.adjustments(auth.entry_id)
        return {
            **responses.authorisation_body(auth),
            "reversed": any(entry.kind == "reversal" for entry in adjustments),
            "refunded_fen": -sum(entry.amount_fen for entry in adjustments if entry.kind == "refund"),
            "adjustments": [responses.adjustment_body(entry) for entry in adjustments],
        }
