"""A Flower Grid that runs ClientApps synchronously in this process.

For quick runs and tests: the same ServerApp logic and ClientApp objects as the simulation
and deployment engines, without Ray's start-up time. Every message and reply is kept in
``sent`` / ``replies`` so tests can inspect exactly what crossed the boundary.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

FIRST_NODE_ID = 1001


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp, num_sites: int,
                 reply_filter: Callable[[Message], Message | None] | None = None):
        self.client_app = client_app
        # Flower stamps new messages with the running task's identity; this process is the server.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
        self.reply_filter = reply_filter
        self.contexts = {
            FIRST_NODE_ID + i: Context(run_id=1, node_id=FIRST_NODE_ID + i, state=RecordDict(), run_config={},
                                       node_config={"partition-id": i, "num-partitions": num_sites})
            for i in range(num_sites)
        }
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        self._pending: dict[str, Message] = {}
        self._run: Run | None = None

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        if self._run is None:
            raise RuntimeError("set_run() was not called on this in-process grid")
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            # Deep copies stand in for the wire: neither side can touch the other's objects,
            # and the logs keep exactly what crossed.
            self.sent.append(copy.deepcopy(message))
            answer = self.client_app(copy.deepcopy(message), self.contexts[message.metadata.dst_node_id])
            reply = self.reply_filter(answer) if self.reply_filter is not None else answer
            if reply is None:  # lost on the way: the site ran, the coordinator never hears
                continue
            self.replies.append(copy.deepcopy(reply))
            self._pending[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._pending.pop(i) for i in list(message_ids) if i in self._pending]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        started = time.monotonic()
        replies = list(self.pull_messages(self.push_messages(messages)))
        if timeout is not None and time.monotonic() - started > timeout:
            raise TimeoutError(f"in-process round took longer than {timeout} s")
        return replies
