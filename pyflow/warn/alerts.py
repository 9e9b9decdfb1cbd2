"""The example's event and alerts: what a run publishes, and who is told (`invoke deploy`).

Each run emits ``pyflow.notices.published`` about its output location, with the count of each
kind of change and of failed sources. Two alerts follow (Prefect automations that
`invoke deploy` creates when ``PYFLOW_ALERT_WEBHOOK`` is set): a failed run (a source that
failed fails the run) and a run that found added or amended notices.
"""

from __future__ import annotations

from pyflow_kit.alerts import Alert, flow_failed

PUBLISHED_EVENT = "pyflow.notices.published"
"""The event a run emits once its outputs are published."""

CHANGED_LABEL = "pyflow.notices.changed"
"""The event resource's label that says whether the run found added or amended notices."""

NEW_NOTICES = Alert(
    name="new WARN notices",
    description="A run of warn-notices found added or amended notices.",
    expect=(PUBLISHED_EVENT,),
    match={"prefect.resource.id": "pyflow.output.*", CHANGED_LABEL: "true"},
    subject=("WARN notices: {{ event.payload.added }} added, {{ event.payload.amended }} amended"),
    body=(
        "Run {{ event.payload.run }} wrote {{ event.payload.output }}: "
        "{{ event.payload.added }} added, {{ event.payload.amended }} amended, "
        "{{ event.payload.removed }} removed, {{ event.payload.sources_failed }} sources failed. "
        "Companies: {{ event.payload.companies | join(', ') }}"
    ),
)

ALERTS = (flow_failed("warn-notices"), NEW_NOTICES)
"""What `invoke deploy` creates: a failed run, and new notices."""
