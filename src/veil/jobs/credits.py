"""Credit balances. Every change is one conditional UPDATE plus a ledger row in the same transaction,
so concurrent approvals can never overdraw a key and every reservation and refund is on record."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from ..db.models import ApiKey, CreditEntry
from ..db.session import changed

BALANCE_MAX = 2**63 - 1  # the BIGINT column; SQLite would silently turn an overflow into a float


class InsufficientCredits(Exception):
    def __init__(self, needed: int, balance: int):
        super().__init__(
            f"this job costs {needed} credits but the key's balance is {balance}; add credits and approve again"
        )
        self.needed, self.balance = needed, balance


def reserve(session: Session, key_id: str, job_id: str, amount: int) -> None:
    """Take `amount` from the key inside the caller's transaction, or raise InsufficientCredits.

    The balance check and the debit are one statement, so two transactions can't both pass the check.
    """
    if amount > 0:
        rows = changed(
            session,
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.credits >= amount)
            .values(credits=ApiKey.credits - amount)
            .execution_options(synchronize_session=False),
        )
        if rows != 1:
            balance = session.scalar(select(ApiKey.credits).where(ApiKey.id == key_id)) or 0
            raise InsufficientCredits(amount, balance)
    session.add(CreditEntry(key_id=key_id, job_id=job_id, kind="reserve", amount=-amount, reason="job approved"))


def refund(session: Session, key_id: str, job_id: str, amount: int, reason: str) -> None:
    """Give `amount` back inside the caller's transaction and record why."""
    if amount <= 0:
        return
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(credits=ApiKey.credits + amount)
        .execution_options(synchronize_session=False)
    )
    session.add(CreditEntry(key_id=key_id, job_id=job_id, kind="refund", amount=amount, reason=reason))


def add_credits(
    db: sessionmaker[Session], key_id: str, amount: int, reason: str = "admin", actor: str = "system"
) -> int:
    """Admin top-up (amount may be negative to correct a balance, never below zero), recorded with who made it
    (`actor`: "admin:<email>", "admin-api", "cli", ...). Returns the new balance."""
    with db.begin() as session:
        return change_balance(session, key_id, amount, reason, actor)


def change_balance(session: Session, key_id: str, amount: int, reason: str, actor: str = "system") -> int:
    """Add `amount` inside the caller's transaction, keeping the balance within 0..BALANCE_MAX; the check
    and the change are one statement. Raises ValueError naming the problem (nothing is changed then)."""
    if not -BALANCE_MAX <= amount <= BALANCE_MAX:
        raise ValueError(f"amount must be between {-BALANCE_MAX} and {BALANCE_MAX}")
    condition = [ApiKey.id == key_id]
    condition.append(ApiKey.credits >= -amount if amount < 0 else ApiKey.credits <= BALANCE_MAX - amount)
    rows = changed(
        session,
        update(ApiKey)
        .where(*condition)
        .values(credits=ApiKey.credits + amount)
        .execution_options(synchronize_session=False),
    )
    if rows != 1:
        balance = session.scalar(select(ApiKey.credits).where(ApiKey.id == key_id))
        if balance is None:
            raise ValueError("unknown key")
        raise ValueError(
            f"the balance ({balance}) would go below zero"
            if amount < 0
            else f"the balance ({balance}) would exceed the largest balance, {BALANCE_MAX}"
        )
    session.add(CreditEntry(key_id=key_id, kind="admin_add", amount=amount, reason=reason, actor=actor))
    return session.scalars(select(ApiKey.credits).where(ApiKey.id == key_id)).one()


def ledger(db: sessionmaker[Session], key_id: str | None = None, job_id: str | None = None) -> list[CreditEntry]:
    query = select(CreditEntry).order_by(CreditEntry.id)
    if key_id:
        query = query.where(CreditEntry.key_id == key_id)
    if job_id:
        query = query.where(CreditEntry.job_id == job_id)
    with db() as session:
        return list(session.scalars(query))
