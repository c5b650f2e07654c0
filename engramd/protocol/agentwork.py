"""How messages and tasks are written as units: the conventions both sides share.

A *message* is a MESSAGE unit whose ``to`` metadata names its recipients
(comma-separated agents, or ``*`` for every agent); ``thread`` groups a
conversation, ``ack_required=true`` asks each recipient to acknowledge it, and
an *acknowledgement* is a MESSAGE unit with ``ack`` set to the message's id and a
RESPONDS_TO relationship to it. A *task* is a TASK_STATUS unit with
``state=open`` (its title is the payload's first line, ``priority`` 0-4); each
change of its state is a further TASK_STATUS unit with ``task`` set to the
task's id and ``state`` the new one (``claimed``, ``open`` again, ``done``),
related to the task by MODIFIES. A claim is a lease on :func:`task_resource`.
"""

from __future__ import annotations

from collections.abc import Mapping

BROADCAST = "*"
MESSAGES_CONTEXT = "messages"
"""Where a message goes when the sender names no context."""
TASKS_CONTEXT = "tasks"
"""Where a task goes when its creator names no context."""

TO = "to"
THREAD = "thread"
ACK_REQUIRED = "ack_required"
ACK_OF = "ack"
STATE = "state"
TASK_OF = "task"
PRIORITY = "priority"
DEFAULT_PRIORITY = 2
TASK_RESOURCE_PREFIX = "task:"


def recipients(meta: Mapping[str, str]) -> list[str]:
    """The agents a unit's metadata addresses (``*`` for all); empty for none."""
    value = meta.get(TO, "")
    return [name for name in (part.strip() for part in value.split(",")) if name]


def wants_ack(meta: Mapping[str, str]) -> bool:
    return meta.get(ACK_REQUIRED) == "true"


def task_resource(task_id: str) -> str:
    """The resource a claim on the task leases."""
    return TASK_RESOURCE_PREFIX + task_id


def task_title(payload: bytes) -> str:
    """A task's title: the first line of its unit's payload."""
    return payload.decode("utf-8", "replace").split("\n", 1)[0].strip()

