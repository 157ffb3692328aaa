"""Flower strategies for fedsyn: FedAvg over the sites still in the run, optionally wrapped
in Flower's server-side fixed-clipping DP for site-level privacy on top of record-level DP."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy

from fedsyn.common import protocol


class SiteFedAvg(FedAvg):
    """FedAvg whose train messages also carry the public (noisy) marginals and go only to
    sites that have not refused or spent their budget.

    Updates are weighted by the ``steps`` metric, which the coordinator checks equals the
    requested local steps for every site: an unweighted mean, no row counts involved.
    """

    def __init__(self, marginals: ArrayRecord, active_nodes: Callable[[], list[int]]):
        super().__init__(fraction_evaluate=0.0, weighted_by_key="steps", arrayrecord_key=protocol.ARRAYS,
                         configrecord_key=protocol.CONFIG)
        self.marginals = marginals
        self.active_nodes = active_nodes

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        record = RecordDict({protocol.ARRAYS: arrays, protocol.MARGINALS: self.marginals, protocol.CONFIG: config})
        return self._construct_messages(record, self.active_nodes(), MessageType.TRAIN)


def build_strategy(marginals: ArrayRecord, active_nodes: Callable[[], list[int]], sites: int, delta: float,
                   site_noise_multiplier: float | None, site_clipping_norm: float) -> Strategy:
    """Plain site FedAvg, or with ``site_noise_multiplier`` Flower's server-side fixed-clipping
    DP wrapper and its RDP accountant (site-level, no sampling amplification)."""
    strategy = SiteFedAvg(marginals, active_nodes)
    if site_noise_multiplier is None:
        return strategy
    accountant = RdpAccountant(PrivacyConfig(
        target_delta=delta, population_size=sites, neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION))
    return DifferentialPrivacyServerSideFixedClipping(strategy, site_noise_multiplier, site_clipping_norm, sites,
                                                      accountant=accountant)
