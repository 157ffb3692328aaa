"""Flower strategies for fedsyn: FedAvg (or Flower's robust FedMedian / FedTrimmedAvg) over
the sites still in the run, optionally wrapped in Flower's server-side fixed-clipping DP for
site-level privacy on top of record-level DP."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Strategy,
)

from fedsyn.federation import protocol


class SiteMessages:
    """Mixin for Flower's FedAvg family: train messages also carry the public (noisy)
    marginals and go only to sites that have not refused or spent their budget.

    Updates are weighted by the ``steps`` metric, which the coordinator checks equals the
    requested local steps for every site: an unweighted mean, no row counts involved.
    """

    def __init__(self, marginals: ArrayRecord, active_nodes: Callable[[], list[int]],
                 per_node: Callable[[int], tuple[int, ArrayRecord] | None] | None = None, **options: float):
        super().__init__(fraction_evaluate=0.0, weighted_by_key="steps", arrayrecord_key=protocol.ARRAYS,
                         configrecord_key=protocol.CONFIG, **options)
        self.marginals = marginals
        self.active_nodes = active_nodes
        self.per_node = per_node

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        """One message per site; with ``per_node``, each also names the site's slot and echoes its
        own noisy marginals back to it (public slot index, DP output: nothing new is revealed)."""
        nodes = self.active_nodes()
        if self.per_node is None:
            record = RecordDict({protocol.ARRAYS: arrays, protocol.MARGINALS: self.marginals,
                                 protocol.CONFIG: config})
            return self._construct_messages(record, nodes, MessageType.TRAIN)
        messages = []
        for node in nodes:
            record = RecordDict({protocol.ARRAYS: arrays, protocol.MARGINALS: self.marginals,
                                 protocol.CONFIG: ConfigRecord(dict(config))})
            own = self.per_node(node)
            if own is not None:
                slot, local = own
                record.config_records[protocol.CONFIG][protocol.SITE_SLOT] = slot
                record.array_records[protocol.LOCAL_MARGINALS] = local
            messages.extend(self._construct_messages(record, [node], MessageType.TRAIN))
        return messages


class SiteFedAvg(SiteMessages, FedAvg):
    """Unweighted mean of site updates."""


class SiteFedMedian(SiteMessages, FedMedian):
    """Coordinate-wise median: one faulty or hostile site cannot drag the model far."""


class SiteFedTrimmedAvg(SiteMessages, FedTrimmedAvg):
    """Coordinate-wise mean after dropping the top and bottom ``beta`` share of sites."""


AGGREGATIONS = {"mean": SiteFedAvg, "median": SiteFedMedian, "trimmed-mean": SiteFedTrimmedAvg}


def build_strategy(marginals: ArrayRecord, active_nodes: Callable[[], list[int]], sites: int, delta: float,
                   site_noise_multiplier: float | None, site_clipping_norm: float, aggregation: str = "mean",
                   per_node: Callable[[int], tuple[int, ArrayRecord] | None] | None = None) -> Strategy:
    """The ``aggregation`` rule over sites, with ``site_noise_multiplier`` wrapped in Flower's
    server-side fixed-clipping DP and its RDP accountant (site-level, no amplification)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation '{aggregation}' is not one of {sorted(AGGREGATIONS)}")
    strategy = AGGREGATIONS[aggregation](marginals, active_nodes, per_node)
    if site_noise_multiplier is None:
        return strategy
    accountant = RdpAccountant(PrivacyConfig(
        target_delta=delta, population_size=sites, neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION))
    return DifferentialPrivacyServerSideFixedClipping(strategy, site_noise_multiplier, site_clipping_norm, sites,
                                                      accountant=accountant)
