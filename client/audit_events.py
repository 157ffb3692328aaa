"""A site's audit-trail vocabulary: every event name its entries carry, in one place.

Writers (the privacy guard in :mod:`fedsyn.client.site`, the ClientApp, the App check in
:mod:`fedsyn.client.ops`) and readers (the ledger's cross-check against the trail, ``fedsyn
client status``) name events only through these constants, so a typo between a writer and a
reader fails at import instead of silently hiding entries. The strings are what existing
trails hold (the trail is hash-chained): never change one.
"""

from __future__ import annotations

from typing import Final

LEDGER_CREATED: Final[str] = "ledger_created"  # the operator's `client ledger init`
LEDGER_RESET: Final[str] = "ledger_reset"  # the same over a ledger that was spent from, with its reason
LEDGER_MOVED: Final[str] = "ledger_moved"  # the ledger's file given another name for what it protects
CHARGED: Final[str] = "privacy_charged"  # a charge, before any row is read for it
BUDGET_REPORTED: Final[str] = "budget_reported"  # an answer to the budget query (charges nothing)
MARGINALS_SENT: Final[str] = "marginals_sent"  # round 0's first release
PAIR_TABLES_SENT: Final[str] = "pair_tables_sent"  # round 0's second release
UPDATE_SENT: Final[str] = "update_sent"  # a training round's update
UPDATE_WITHHELD: Final[str] = "update_withheld"  # a charged round whose update was not sent
REPLY_REPLAYED: Final[str] = "reply_replayed"  # a stored answer sent again, at no cost
REQUEST_REFUSED: Final[str] = "request_refused"  # also the event of the newest refusal kept beside the ledger
APP_REFUSED: Final[str] = "app-refused"  # an App bundle the site's pin does not allow

LEDGER_STARTS: Final[tuple[str, str]] = (LEDGER_CREATED, LEDGER_RESET)  # the trail counts charges from the newest
SENT: Final[tuple[str, str, str]] = (MARGINALS_SENT, PAIR_TABLES_SENT, UPDATE_SENT)  # an answer that left the site
