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

NodeConfig = Callable[[int], dict[str, int | float]]

# What Flower's site-level figure covers, written beside it wherever it is shown (privacy
# report, terminal): the wrapper clips and noises the averaged training updates only. Round 0's
# noisy tables, each site's noisy row total and the per-slot tables the checkpoint keeps carry
# record-level noise alone, so the release as a whole has no hospital-level bound.
SITE_LEVEL_SCOPE = ("the averaged training updates only: each site's round-0 tables and noisy row total, "
                    "kept per site slot in the release, carry record-level noise alone, so the release as a "
                    "whole has no site-level epsilon")


class SiteMessages:
    """Mixin for Flower's FedAvg family: train messages also carry the public (noisy)
    marginals and go only to sites that have not refused or spent their budget.

    Updates are weighted by the ``steps`` metric, which the coordinator checks equals the
    requested local steps for every site: an unweighted mean, no row counts involved.
    """

    def __init__(self, marginals: ArrayRecord, active_nodes: Callable[[], list[int]], node_config: NodeConfig,
                 slot_marginals: ArrayRecord | None = None, **options: float):
        # A mixin of Flower's FedAvg family: mypy reads this super() as object's.
        super().__init__(fraction_evaluate=0.0, weighted_by_key="steps",  # type: ignore[call-arg]
                         arrayrecord_key=protocol.ARRAYS, configrecord_key=protocol.CONFIG, **options)
        self.marginals = marginals
        self.active_nodes = active_nodes
        self.node_config = node_config
        self.slot_marginals = slot_marginals

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        """One message per site, its config completed by ``node_config`` (the site's epsilon cap
        and, with site slots, its slot); a message naming a slot also carries every slot's
        round-0 tables (public slot indices and DP outputs: nothing new is revealed)."""
        messages = []
        for node in self.active_nodes():
            own = ConfigRecord({**dict(config), **self.node_config(node)})
            record = RecordDict({protocol.ARRAYS: arrays, protocol.MARGINALS: self.marginals, protocol.CONFIG: own})
            if protocol.SITE_SLOT in own and self.slot_marginals is not None:
                record.array_records[protocol.SLOT_MARGINALS] = self.slot_marginals
            messages.append(Message(content=record, message_type=MessageType.TRAIN, dst_node_id=node))
        return messages


class SiteFedAvg(SiteMessages, FedAvg):
    """Unweighted mean of site updates."""


class SiteFedMedian(SiteMessages, FedMedian):
    """Coordinate-wise median: one faulty or hostile site cannot drag the model far."""


class SiteFedTrimmedAvg(SiteMessages, FedTrimmedAvg):
    """Coordinate-wise mean after dropping the top and bottom ``beta`` share of sites."""


AGGREGATIONS = {"mean": SiteFedAvg, "median": SiteFedMedian, "trimmed-mean": SiteFedTrimmedAvg}


def build_strategy(marginals: ArrayRecord, active_nodes: Callable[[], list[int]], node_config: NodeConfig,
                   sites: int, delta: float, site_noise_multiplier: float | None, site_clipping_norm: float,
                   aggregation: str = "mean", slot_marginals: ArrayRecord | None = None) -> Strategy:
    """The ``aggregation`` rule over sites, with ``site_noise_multiplier`` wrapped in Flower's
    server-side fixed-clipping DP and its RDP accountant (site-level, no amplification)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation '{aggregation}' is not one of {sorted(AGGREGATIONS)}")
    strategy = AGGREGATIONS[aggregation](marginals, active_nodes, node_config, slot_marginals)
    if site_noise_multiplier is None:
        return strategy
    accountant = RdpAccountant(PrivacyConfig(
        target_delta=delta, population_size=sites, neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION))
    return DifferentialPrivacyServerSideFixedClipping(strategy, site_noise_multiplier, site_clipping_norm, sites,
                                                      accountant=accountant)
