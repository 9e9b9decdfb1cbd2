"""Alerts: events a flow emits, and Prefect automations, declared in code, that tell people.

A flow module declares its alerts as ``ALERTS`` (a tuple of `Alert`), beside its flow, as it
declares the flow; `invoke deploy` creates or updates them on the Prefect API with the
deployments (`apply`). Each alert is an automation whose action sends a notification to one
webhook block, ``pyflow-alerts``, whose URL is the setting ``PYFLOW_ALERT_WEBHOOK``, in Slack's
incoming-webhook format (``{"text": ...}``), which Slack, Mattermost, Rocket.Chat and most chat
tools take. Without the setting no alert is created, and `apply` says so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from prefect.automations import Automation
from prefect.events import emit_event
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.exceptions import ObjectNotFound

from pyflow_kit.settings import Settings

logger = logging.getLogger(__name__)

BLOCK_NAME = "pyflow-alerts"
"""The webhook block every alert notifies."""

NAME_PREFIX = "pyflow: "
"""Automations `apply` owns are named with this prefix."""

SLACK_JSON = {"text": "*{{subject}}*\n{{body}}"}
"""The request body: Slack's incoming-webhook format."""


@dataclass(frozen=True)
class Alert:
    """A notification sent when an event happens: an automation, declared in code."""

    name: str
    """A short name, unique in the project; the automation is ``pyflow: NAME``."""
    description: str
    expect: tuple[str, ...]
    """The events that fire it (such as ``prefect.flow-run.Failed``)."""
    subject: str
    """The notification's first line: a Jinja template over ``event``, ``flow_run``, ``flow``."""
    body: str
    """The rest of the notification: a template, as ``subject``."""
    match: Mapping[str, str | list[str]] | None = None
    """Labels the event's resource must have (``*`` matches any text)."""
    match_related: Mapping[str, str | list[str]] | None = None
    """Labels one of the event's related resources must have."""

    @property
    def automation_name(self) -> str:
        """The automation's name on the Prefect API."""
        return f"{NAME_PREFIX}{self.name}"

    def automation(self, block_id: Any) -> Automation:
        """Return the automation: this alert's trigger, notifying the block ``block_id``."""
        return Automation(
            name=self.automation_name,
            description=self.description,
            enabled=True,
            trigger=EventTrigger(
                expect=set(self.expect),
                match=dict(self.match or {}),
                match_related=dict(self.match_related or {}),
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[
                SendNotification(block_document_id=block_id, subject=self.subject, body=self.body)
            ],
        )


def flow_failed(*flows: str) -> Alert:
    """Return the alert for a failed or crashed run of any of these flows."""
    return Alert(
        name="flow run failed",
        description=f"A run of {', '.join(flows)} failed or crashed.",
        expect=("prefect.flow-run.Failed", "prefect.flow-run.Crashed"),
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(flows)},
        subject="{{ flow.name }}: run {{ flow_run.name }} {{ flow_run.state.name | lower }}",
        body="{{ flow_run.state.message }}",
    )


def chat_text(text: str) -> str:
    """Escape what the webhook's format (Slack's) reads as markup: ``<!channel>``, ``<url|label>``.

    For text from the data (a company's name) that an alert's body shows as it is.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def emit(event: str, resource_id: str, payload: Mapping[str, Any], **labels: str) -> None:
    """Emit an event about a resource (such as an output location), for automations to follow."""
    emitted = emit_event(
        event,
        resource={"prefect.resource.id": resource_id, **labels},
        payload=dict(payload),
    )
    if emitted is None:
        logger.warning("The event %s could not be emitted; its alerts will not fire", event)


def apply(settings: Settings, alerts: Iterable[Alert]) -> list[str]:
    """Create or update each alert's automation and the webhook block; say what was done.

    Without ``PYFLOW_ALERT_WEBHOOK``, no alert is created, and any this function created before
    is deleted, so none is attempted.
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.types import SecretDict

    alerts = list(alerts)
    if not alerts:
        return []
    if settings.alert_webhook is None:
        removed = [alert.name for alert in alerts if _delete(alert.automation_name)]
        with contextlib.suppress(ValueError, ObjectNotFound):  # it holds the URL: not kept
            CustomWebhookNotificationBlock.delete(BLOCK_NAME)
        return [
            "alerts are off: PYFLOW_ALERT_WEBHOOK is not set, so no notification is attempted"
            + (f" (removed: {', '.join(removed)})" if removed else "")
            + ". Set it to a Slack incoming-webhook URL in .env and run `invoke deploy` again"
        ]
    block = CustomWebhookNotificationBlock(
        name=BLOCK_NAME,
        url="{{webhook}}",
        json_data=SLACK_JSON,
        headers=None,
        cookies=None,
        secrets=SecretDict({"webhook": settings.alert_webhook.get_secret_value()}),
    )
    block_id = block.save(BLOCK_NAME, overwrite=True)
    said = []
    for alert in alerts:
        automation = alert.automation(block_id)
        try:
            existing = cast("Automation", Automation.read(name=alert.automation_name))
        except ValueError:
            automation.create()
            said.append(f"created alert '{alert.name}'")
        else:
            automation.id = existing.id
            automation.update()
            said.append(f"updated alert '{alert.name}'")
    return said


def _delete(name: str) -> bool:
    """Delete the automation of this name, if there is one; return whether there was."""
    try:
        cast("Automation", Automation.read(name=name)).delete()
    except ValueError:
        return False
    return True
