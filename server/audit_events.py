"""The coordinator's audit-log vocabulary: every event name its entries carry, in one place.

Writers (:meth:`fedsyn.server.coordinator.Coordinator.record`, reply screening, the ServerApp)
and readers (the run's record, resume, the release check, the dashboard in
:mod:`fedsyn.server.ops`, the command line) name events only through these constants, so a
typo between a writer and a reader fails at import instead of silently hiding entries. The
strings are what existing logs hold (the log is hash-chained): never change one.
"""

from __future__ import annotations

from typing import Final

# A run, in the order its entries come.
RUN_STARTED: Final[str] = "run_started"  # a fresh run (its Flower run id)
RUN_RESUMED: Final[str] = "run_resumed"  # a run continued from its saved state (clears an earlier RUN_FAILED)
RUN_CONFIGURED: Final[str] = "run_configured"  # opens each run's entries: its public settings and schema
SITE_BUDGET: Final[str] = "site_budget"  # a site's answer to the budget query, and its plan for the run
SITE_RENAMED: Final[str] = "site_renamed"  # a node that now gives another name than before
SITE_JOINED: Final[str] = "site_joined"  # round 0's first release accepted
PAIR_TABLES_ACCEPTED: Final[str] = "pair_tables_accepted"  # round 0's second release accepted
PAIRS_CHOSEN: Final[str] = "pairs_chosen"
GENERATOR_FITTED_TO_TABLES: Final[str] = "generator_fitted_to_tables"
ROUND_STARTED: Final[str] = "round_started"
UPDATE_ACCEPTED: Final[str] = "update_accepted"  # a training round's reply accepted
UPDATE_REJECTED: Final[str] = "update_rejected"  # a reply dropped for this round (its reason said)
SITE_REFUSED: Final[str] = "site_refused"  # a site left out for the rest of the run (its reason said)
ROUND_FINISHED: Final[str] = "round_finished"
SITE_FINISHED: Final[str] = "site_finished"  # a site whose budget fits no more rounds
SITE_JOINED_LATE: Final[str] = "site_joined_late"  # a node connected after the budget query
TRAINING_STOPPED: Final[str] = "training_stopped"  # fewer sites than min-sites can train on
SAVED: Final[str] = "state_saved"  # vouches for a state file (its SHA-256): what --resume trusts
RELEASE_MODEL_CHOSEN: Final[str] = "release_model_chosen"
RELEASE_ARCHIVED: Final[str] = "release_archived"  # an earlier release moved aside for this run's
RELEASE_WRITTEN: Final[str] = "release_written"
RUN_FAILED: Final[str] = "run_failed"  # a run its error stopped (the dashboard shows why)

DROPS: Final[tuple[str, str]] = (SITE_REFUSED, UPDATE_REJECTED)  # a site dropped, with its reason
JOINS: Final[tuple[str, str]] = (SITE_JOINED, UPDATE_ACCEPTED)  # a site's round accepted
