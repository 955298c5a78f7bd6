"""An app over the test backend with a small rulebook, and a signed terminal client."""

from __future__ import annotations

from typing import Any

import pytest

from pos_engine.api import create_app
from pos_engine.config import Settings
from pos_engine.domain.clock import FixedClock
from pos_engine.domain.rulebook import Conditions, Limit
from pos_engine.service.context import EngineContext
from tests.conftest import Backend
from tests.helpers import SignedClient, World, discount, make_campaign, make_context, make_rule, make_rulebook, subsidy

CARD = "6217000000000001"


@pytest.fixture
def rulebook() -> Any:
    """A 5 % merchant discount and a 10 % city subsidy capped at 2 uses and 3000 fen per card per month."""
    discount_rule = make_rule(
        "agreement-m-1", "five-percent", discount(percent_bp=500), exclusive=True, conditions=Conditions(merchant_ids=frozenset({"m-1"}))
    )
    subsidy_rule = make_rule(
        "city-dining",
        "ten-percent",
        subsidy(percent_bp=1000),
        limits=(Limit("card", "month", uses_max=2, fen_max=3000),),
    )
    return make_rulebook(
        make_campaign("agreement-m-1", (discount_rule,), funders=()),
        make_campaign("city-dining", (subsidy_rule,), budget_fen=1_000_000),
    )


@pytest.fixture
def context(backend: Backend, rulebook: Any, clock: FixedClock) -> EngineContext:
    return make_context(backend.database, backend.counters, rulebook, clock)


@pytest.fixture
def app(context: EngineContext) -> Any:
    app = create_app(Settings(), context)
    app.testing = True
    return app


@pytest.fixture
def terminal(app: Any, world: World, clock: FixedClock) -> SignedClient:
    terminal_id = world.add_merchant("m-1")
    world.add_card(CARD)
    secret, _ = world.terminals[terminal_id]
    return SignedClient(app.test_client(), terminal_id, secret, clock)
