"""What a site's errors and refusals tell the coordinator: the kind of failure or
the setting at fault, never the site's data.

Flower sends an exception raised in a ClientApp to the server as the reply's
error reason, message included (``"<class 'ValueError'>:<'...'>"``). Our messages
are written for the site's operator and may quote the site's data: a row's label
that is not a class, a line of a JSON file, a path on the site's disk. So the
outermost client mod, :func:`site_errors_mod`, catches every exception, logs it in
full at the site (its operator sees everything), and replies with an error that
names the exception's type and, only for the errors whose messages are about the
run's settings or the protocol (never the site's records), the message itself.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedshield.common.config import ConfigError
from fedshield.common.schema import Record, Refusal, SiteKey
from fedshield.models.state import StateMismatchError
from fedshield.privacy.secagg import ProtocolError, SecAggAborted

__all__ = ["ERROR_CODE", "public_reason", "refusal_reply", "site_errors_mod"]

logger = logging.getLogger(__name__)

ERROR_CODE = 7300  # fedshield: a site's own failure, reported without its data

# errors about settings and messages, whose text quotes no record
_SETTINGS_ERRORS = (ProtocolError, SecAggAborted, StateMismatchError)


def public_reason(err: BaseException) -> str:
    """The reason sent to the server for ``err``: its type, and its message only
    when that can quote no site data."""
    kind = type(err).__name__
    if isinstance(err, _SETTINGS_ERRORS) or type(err) is ConfigError:
        return f"{kind}: {err}"
    return (
        f"{kind} at the site; the site's log has the details (messages that may "
        "quote the site's records or files are not sent)"
    )


def refusal_reply(msg: Message, site: str, refusal: Refusal) -> Message:
    """The reply of a site that will not take part: its reason (settings, never
    data) and, for a budget refusal, the budget's numbers; no update."""
    logger.warning("%s refuses the round: %s", site, refusal.reason)
    content = RecordDict(
        {
            Record.REFUSAL: ConfigRecord(refusal.to_record()),
            Record.SITE: ConfigRecord({SiteKey.NAME: site}),
        }
    )
    return Message(content=content, reply_to=msg)


def site_errors_mod(
    msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Run the rest of the ClientApp; turn an exception into a data-free error."""
    try:
        return call_next(msg, context)
    except Exception as err:  # every failure, so none reaches Flower's reply as is
        logger.exception("The site failed on a %s message", msg.metadata.message_type)
        return Message(Error(code=ERROR_CODE, reason=public_reason(err)), reply_to=msg)
