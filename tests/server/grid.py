"""An in-memory stand-in for Flower's ``Grid``: every pushed message is answered by
its site at the next pull, through whatever :meth:`InMemoryGrid.reply` does (the
real client mods and handlers in the tests that subclass it). No Flower runtime."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Message, RecordDict


class InMemoryGrid:
    """Sites ``nodes``, each with its own ``Context`` (``run_config``, empty state)."""

    def __init__(self, nodes: Iterable[int], run_config: dict[str, Any]) -> None:
        self.nodes = list(nodes)
        self.contexts = {
            n: Context(
                run_id=1,
                node_id=n,
                node_config={},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for n in self.nodes
        }
        self.pending: dict[str, Message] = {}

    def reply(self, msg: Message, node: int) -> Message:
        """Site ``node``'s answer to ``msg``."""
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            mid = f"m{len(self.pending)}-{id(msg)}"
            msg.metadata.__dict__["_message_id"] = mid
            self.pending[mid] = msg
            ids.append(mid)
        return ids

    def pull_messages(self, ids: Iterable[str]) -> list[Message]:
        out = []
        for mid in ids:
            msg = self.pending.pop(mid)
            node = msg.metadata.dst_node_id
            reply = self.reply(msg, node)
            reply.metadata.__dict__["_src_node_id"] = node
            reply.metadata.__dict__["_reply_to_message_id"] = mid
            out.append(reply)
        return out
