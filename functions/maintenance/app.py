"""MaintenanceFunction: schema migrations and the scheduled reconciliation (no HTTP route).

Events:
- `{"action": "migrate"}`: invoked by hand (or by the deploy pipeline) after each deploy; with
  `"drop_other_routines": true` also drops the routines of older code versions (once no older
  code runs);
- `{"action": "reconcile"}` (optionally with `"user_id"`): the daily schedule in template.yaml.

Each action's module is imported only when that action runs.
"""

from __future__ import annotations

from typing import Any

from metering.observability import logger

ACTIONS = ("migrate", "reconcile")


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    action = event.get("action") if isinstance(event, dict) else None

    if action == "migrate":
        from metering.db.migrate import migrate

        drop = event.get("drop_other_routines", False)
        if not isinstance(drop, bool):
            raise ValueError(f"drop_other_routines must be true or false, not {drop!r}")
        done = migrate(drop_other_routines=drop)
        logger.info("database migrated", extra={"revision": done.revision, "dropped": done.dropped_routines})
        return {
            "action": "migrate",
            "revision": done.revision,
            "dropped_routines": len(done.dropped_routines),
        }

    if action == "reconcile":
        from metering.services.reconcile import reconcile

        report = reconcile(user_id=event.get("user_id"))
        text = str(report)
        if report.clean:
            logger.info(text, extra={"clean": True, "drifts": 0})
        else:
            logger.warning(text, extra={"clean": False, "drifts": len(report.drifts)})
        return {"action": "reconcile", "clean": report.clean, "drifts": len(report.drifts)}

    raise ValueError(f"unknown action {action!r}: expected one of {', '.join(ACTIONS)}")
