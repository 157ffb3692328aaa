"""The Flower ClientApp: decodes the coordinator's message, runs :class:`Site`, replies.

Refusals (policy, budget, bad data) become Flower error replies with a readable reason;
the coordinator logs them and carries on with the other sites.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsyn.client.policy import SitePolicy
from fedsyn.client.site import PolicyRefusal, Site, TrainRequest
from fedsyn.common import protocol
from fedsyn.common.accounting import PrivacyEvent
from fedsyn.common.marginals import Marginals
from fedsyn.common.training import GANConfig

log = logging.getLogger("fedsyn.client")

REFUSED = 403
FAILED = 500

PolicyResolver = Callable[[Context], SitePolicy]


def policy_from_node_config(context: Context) -> SitePolicy:
    """Deployment: the SuperNode is started with ``--node-config 'policy="/etc/fedsyn/site.toml"'``."""
    if "policy" not in context.node_config:
        raise PolicyRefusal("this node was started without node-config 'policy' (path to the site policy file)")
    return SitePolicy.load(str(context.node_config["policy"]))


def _error_reply(message: Message, code: int, reason: str) -> Message:
    return Message(error=Error(code=code, reason=reason), reply_to=message)


def _decode_marginals(content: RecordDict) -> Marginals:
    return Marginals(dict(protocol.from_array_record(content.array_records[protocol.MARGINALS])))


@contextmanager
def _coordinator_instructions() -> Iterator[None]:
    """Decode the coordinator's instructions: a malformed field is a refusal, never a crash."""
    try:
        yield
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise PolicyRefusal(f"the coordinator's instructions are malformed: {exc}") from None


def _decode_request(config: ConfigRecord) -> TrainRequest:
    with _coordinator_instructions():
        return TrainRequest(
            round=int(config["round"]),
            total_rounds=int(config["total_rounds"]),
            local_steps=int(config["local_steps"]),
            sample_rate=float(config["sample_rate"]),
            epsilon=float(config["epsilon"]),
            noise_multiplier=float(config["noise_multiplier"]) if "noise_multiplier" in config else None,
            gan_config=GANConfig.from_dict(json.loads(str(config["gan_config"]))),
            transport_dtype=str(config.get("transport_dtype", "float32")),
        )


def _privacy_record(site: Site, event: PrivacyEvent) -> ConfigRecord:
    return protocol.event_record(event, site.ledger.epsilon(), site.ledger.delta, site.policy.site_id)


def make_client_app(resolve_policy: PolicyResolver = policy_from_node_config) -> ClientApp:
    app = ClientApp()

    def guarded(handler: Callable[[Message, Site], RecordDict]) -> Callable[[Message, Context], Message]:
        def run(message: Message, context: Context) -> Message:
            site: Site | None = None
            try:
                site = Site(resolve_policy(context))
                return Message(content=handler(message, site), reply_to=message)
            except PolicyRefusal as exc:
                log.warning("refused: %s", exc)
                if site is not None:
                    site.trail.append("request_refused", message_type=message.metadata.message_type, reason=str(exc))
                return _error_reply(message, REFUSED, f"refused by site policy: {exc}")
            except (ValueError, OSError, protocol.ReplyError) as exc:
                log.error("failed: %s", exc)
                return _error_reply(message, FAILED, f"site error: {exc}")
        return run

    def marginals(message: Message, site: Site) -> RecordDict:
        config = message.content.config_records[protocol.CONFIG]
        with _coordinator_instructions():
            sigma, epsilon = float(config["noise_multiplier"]), float(config["epsilon"])
        released, event = site.release_marginals(sigma, epsilon)
        return RecordDict({
            protocol.MARGINALS: protocol.to_array_record(released.counts),
            protocol.PRIVACY: _privacy_record(site, event),
        })

    def train(message: Message, site: Site) -> RecordDict:
        content = message.content
        request = _decode_request(content.config_records[protocol.CONFIG])
        arrays = protocol.from_array_record(content.array_records[protocol.ARRAYS])
        updated, metrics, event = site.train(request, arrays, _decode_marginals(content))
        return RecordDict({
            protocol.ARRAYS: protocol.to_array_record(updated),
            protocol.METRICS: protocol.metrics_record(metrics),
            protocol.PRIVACY: _privacy_record(site, event),
        })

    app.query("marginals")(guarded(marginals))
    app.train()(guarded(train))
    return app
