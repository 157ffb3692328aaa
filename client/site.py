"""What a hospital does when the coordinator asks: the privacy guard and local DP training.

Every request is checked against the site's own :class:`SitePolicy` first; the cost of a
request is charged to the on-disk ledger *before* the mechanism runs, so a crash can only
over-count, never forget. Noise seeds come from this site alone: a coordinator that chose
the seed could subtract the noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from fedsyn.client.policy import SitePolicy
from fedsyn.common.accounting import BudgetExceededError, PrivacyEvent, PrivacyLedger, calibrate_noise_multiplier
from fedsyn.common.audit import AuditLog
from fedsyn.common.encoder import TableEncoder
from fedsyn.common.marginals import Marginals, noisy_marginals
from fedsyn.common.schema import Schema
from fedsyn.common.tables import read_table
from fedsyn.common.training import GANConfig, GANTrainer
from fedsyn.common.validation import require_valid


class PolicyRefusal(RuntimeError):
    """The coordinator asked for something this site's policy does not allow."""


@dataclass(frozen=True)
class TrainRequest:
    """The coordinator's instructions for one round (public values only)."""

    round: int
    total_rounds: int
    local_steps: int
    sample_rate: float
    epsilon: float
    noise_multiplier: float | None
    gan_config: GANConfig
    transport_dtype: str = "float32"

    def __post_init__(self) -> None:
        # NaN compares False with everything: without this a NaN budget would pass every check.
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise PolicyRefusal(f"epsilon={self.epsilon} is not a positive finite budget")
        if self.noise_multiplier is not None and not (math.isfinite(self.noise_multiplier)
                                                      and self.noise_multiplier > 0):
            raise PolicyRefusal(f"noise_multiplier={self.noise_multiplier} is not a positive finite value")
        if self.transport_dtype not in ("float32", "float16"):
            raise PolicyRefusal(f"transport dtype '{self.transport_dtype}' is not float32 or float16")
        if not 1 <= self.round <= self.total_rounds <= 100_000:
            raise PolicyRefusal(f"round {self.round} of {self.total_rounds} is not a valid plan")
        if not 1 <= self.local_steps <= 100_000:
            raise PolicyRefusal(f"local_steps={self.local_steps} is outside 1..100000")
        if not 0 < self.sample_rate <= 1:
            raise PolicyRefusal(f"sample_rate={self.sample_rate} is outside (0, 1]")
        widths = (*self.gan_config.generator_hidden, *self.gan_config.discriminator_hidden, self.gan_config.latent_dim)
        if max(widths) > 4096 or len(widths) > 12:
            raise PolicyRefusal(f"network size {widths} exceeds what this site accepts (4096 wide, 12 layers)")


class Site:
    """One hospital's side of the federation, bound to its policy and ledger."""

    def __init__(self, policy: SitePolicy):
        self.policy = policy
        self.seed = policy.seed
        self.schema = Schema.load(policy.schema_path)
        self.schema.require_reviewed(policy.allow_unreviewed_schema)
        self.ledger = PrivacyLedger.open(policy.ledger, policy.delta, policy.accountant)
        self.trail = AuditLog(policy.audit_trail)

    def load_data(self) -> pd.DataFrame:
        frame = read_table(self.policy.data, self.schema)
        require_valid(frame, self.schema, source=str(self.policy.data))
        return frame

    def _check_epsilon(self, requested: float) -> float:
        if requested > self.policy.max_epsilon:
            raise PolicyRefusal(
                f"site '{self.policy.site_id}' allows at most epsilon={self.policy.max_epsilon} in total; "
                f"the coordinator asked for {requested}")
        return requested

    def release_marginals(self, noise_multiplier: float, epsilon: float) -> tuple[Marginals, PrivacyEvent]:
        if not all(math.isfinite(v) and v > 0 for v in (noise_multiplier, epsilon)):
            raise PolicyRefusal(f"noise multiplier {noise_multiplier} and epsilon {epsilon} must be positive "
                                "and finite")
        budget = self._check_epsilon(epsilon)
        event = PrivacyEvent("gaussian-marginals", noise_multiplier, 1.0, 1, round=0)
        try:
            self.ledger.charge(event, budget)  # before the release is computed
        except BudgetExceededError as exc:
            raise PolicyRefusal(str(exc)) from None
        rng = np.random.default_rng(self.seed)
        marginals, _ = noisy_marginals(self.load_data(), self.schema, noise_multiplier, rng)
        self.trail.append("marginals_sent", privacy=asdict(event), epsilon_spent=self.ledger.epsilon())
        return marginals, event

    def plan_noise(self, request: TrainRequest) -> float:
        """Noise for this round: the coordinator's value if the policy allows it, else calibrated
        so that what is spent plus the rest of the plan fits the budget (stateless, so a
        restarted site recomputes the same value)."""
        budget = self._check_epsilon(request.epsilon)
        if request.noise_multiplier is not None:
            if request.noise_multiplier < self.policy.min_noise_multiplier:
                raise PolicyRefusal(
                    f"noise multiplier {request.noise_multiplier} is below this site's minimum "
                    f"{self.policy.min_noise_multiplier}")
            return request.noise_multiplier
        remaining = (request.total_rounds - request.round + 1) * request.local_steps
        try:
            sigma = calibrate_noise_multiplier(budget, self.policy.delta, request.sample_rate, remaining,
                                               self.ledger.events, self.policy.accountant)
        except BudgetExceededError as exc:
            raise PolicyRefusal(f"site '{self.policy.site_id}': {exc}") from None
        return max(sigma, self.policy.min_noise_multiplier)

    def train(self, request: TrainRequest, arrays: dict[str, np.ndarray], marginals: Marginals
              ) -> tuple[dict[str, np.ndarray], dict[str, float], PrivacyEvent]:
        sigma = self.plan_noise(request)
        event = PrivacyEvent("dp-sgd", sigma, request.sample_rate, request.local_steps, round=request.round)
        try:
            self.ledger.charge(event, request.epsilon)  # before any step runs
        except BudgetExceededError as exc:
            raise PolicyRefusal(f"site '{self.policy.site_id}': {exc}") from None
        frame = self.load_data()
        encoder = TableEncoder(self.schema, marginals)
        trainer = GANTrainer(encoder, request.gan_config, device=self.policy.device, seed=self.seed)
        trainer.load_state_arrays(arrays)
        data = torch.as_tensor(encoder.encode(frame), device=trainer.device)
        history = trainer.train(data, request.local_steps, request.sample_rate, sigma)
        metrics = {
            "discriminator_fake_loss": float(np.mean([h.discriminator for h in history])),
            "generator_loss": float(np.mean([h.generator for h in history])),
            "steps": float(len(history)),
        }
        updated = {k: v.astype(request.transport_dtype) for k, v in trainer.state_arrays().items()}
        self.trail.append("update_sent", privacy=asdict(event), epsilon_spent=self.ledger.epsilon(), metrics=metrics)
        return updated, metrics, event
