"""Tests of alerts: automations created, updated and removed on a real Prefect server."""

from __future__ import annotations

import pytest
from prefect.automations import Automation
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.events.actions import SendNotification

from pyflow_kit import alerts
from pyflow_kit.settings import get_settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

WEBHOOK = "http://127.0.0.1:9/hooks/T000/B000/XXXX"

DONE = alerts.Alert(
    name="kit test report",
    description="A report was written.",
    expect=("acme.report.written",),
    match={"prefect.resource.id": "acme.report.*", "acme.report.big": "true"},
    subject="Report: {{ event.payload.rows }} rows",
    body="Written to {{ event.payload.output }}",
)


def test_apply_creates_then_updates_then_removes_the_automations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failed = alerts.flow_failed("hello")
    monkeypatch.setenv("PYFLOW_ALERT_WEBHOOK", WEBHOOK)
    assert alerts.apply(get_settings(), [failed, DONE]) == [
        "created alert 'flow run failed'",
        "created alert 'kit test report'",
    ]
    assert alerts.apply(get_settings(), [failed, DONE]) == [
        "updated alert 'flow run failed'",
        "updated alert 'kit test report'",
    ]
    found = Automation.read(name="pyflow: kit test report")
    assert found.trigger.expect == {"acme.report.written"}
    assert found.trigger.match.model_dump() == {
        "prefect.resource.id": "acme.report.*",
        "acme.report.big": "true",
    }
    [action] = found.actions
    assert isinstance(action, SendNotification)
    assert action.subject == DONE.subject
    block = CustomWebhookNotificationBlock.load(alerts.BLOCK_NAME)
    assert block.url == "{{webhook}}"
    assert block.secrets.get_secret_value() == {"webhook": WEBHOOK}
    assert block.json_data == alerts.SLACK_JSON
    failure = Automation.read(name="pyflow: flow run failed")
    assert failure.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert failure.trigger.match_related.model_dump() == {
        "prefect.resource.role": "flow",
        "prefect.resource.name": ["hello"],
    }

    monkeypatch.delenv("PYFLOW_ALERT_WEBHOOK")
    [said] = alerts.apply(get_settings(), [failed, DONE])
    assert said == (
        "alerts are off: PYFLOW_ALERT_WEBHOOK is not set, so no notification is attempted "
        "(removed: flow run failed, kit test report). Set it to a Slack incoming-webhook URL in "
        ".env and run `invoke deploy` again"
    )
    with pytest.raises(ValueError, match="not found"):
        Automation.read(name="pyflow: kit test report")
    assert alerts.apply(get_settings(), []) == []


def test_alert_webhook_is_a_secret_in_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYFLOW_ALERT_WEBHOOK", WEBHOOK)
    settings = get_settings()
    assert WEBHOOK not in repr(settings) and WEBHOOK not in str(settings.model_dump())
    assert settings.alert_webhook is not None
    assert settings.alert_webhook.get_secret_value() == WEBHOOK


def test_chat_text_escapes_the_markup_of_a_slack_message() -> None:
    """A company named like a mention or a link reaches the chat as text, ampersands first."""
    assert alerts.chat_text("<!channel> & <https://x.test|Acme>") == (
        "&lt;!channel&gt; &amp; &lt;https://x.test|Acme&gt;"
    )
    assert alerts.chat_text("Smith & Sons") == "Smith &amp; Sons"
