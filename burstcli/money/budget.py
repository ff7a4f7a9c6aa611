"""The --max-cost budget: reserve each request's worst case before sending, settle after."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UsageError
from ..models import Request
from .pricing import PriceBook, worst_case_cost

ReserveFn = Callable[[Request], float | None]


def worst_case(prices: PriceBook, assumed_max_tokens: int, *, batch: bool = False) -> ReserveFn:
    """What --max-cost reserves for a request: every prompt token bound (UTF-8 bytes) at the
    uncached rate plus its whole completion allowance; None when the price is unknown."""

    def reserve(req: Request) -> float | None:
        price = prices.price(req.model)
        if price is None:
            return None
        return worst_case_cost(
            price,
            req.prompt_tokens_upper,
            req.completion_tokens_upper(assumed_max_tokens),
            batch=batch,
        )

    return reserve


class Budget:
    """A hard USD cap: reserve a request's worst case before sending, settle on the real cost."""

    def __init__(self, cap: float, worst_case: ReserveFn, spent: float = 0.0) -> None:
        self.cap = cap
        self.spent = spent
        self.reserved = 0.0
        self._worst_case = worst_case

    def reserve(self, req: Request) -> float | None:
        """The amount held for `req`, or None when it would cross the cap."""
        amount = self._worst_case(req)
        if amount is None:
            raise UsageError(
                f"--max-cost needs a price for model {req.model!r} (line "
                f"{req.line}); add one with --prices FILE"
            )
        if self.spent + self.reserved + amount > self.cap + 1e-12:
            return None
        self.reserved += amount
        return amount

    def settle(self, held: float, cost: float | None) -> None:
        self.reserved -= held
        # A response without usage is charged at the reservation: the cap stays honest.
        self.spent += held if cost is None else cost
