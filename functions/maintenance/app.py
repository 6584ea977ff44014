"""MaintenanceFunction: schema migrations and the scheduled reconciliation (no HTTP route).

Events:
- `{"action": "migrate"}`: invoked by hand (or by the deploy pipeline) with each deploy, before
  the new code serves (its routines come with the schema);
- `{"action": "reconcile"}` (optionally with `"user_id"`): the daily schedule in template.yaml;
- `{"action": "expire_grants"}`: every 5 minutes, journals what expired grants left (reads
  already exclude it from the expiry instant; this makes it visible in the ledger).

Each action's module is imported only when that action runs.
"""

from __future__ import annotations

from typing import Any

from metering.observability import logger

ACTIONS = ("migrate", "reconcile", "expire_grants")


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    action = event.get("action") if isinstance(event, dict) else None

    if action == "migrate":
        from metering.db.migrate import upgrade_to_head

        revision = upgrade_to_head()
        logger.info("database migrated", extra={"revision": revision})
        return {"action": "migrate", "revision": revision}

    if action == "reconcile":
        from metering.services.reconcile import reconcile

        report = reconcile(user_id=event.get("user_id"))
        text = str(report)
        if report.clean:
            logger.info(text, extra={"clean": True, "drifts": 0})
        else:
            logger.warning(text, extra={"clean": False, "drifts": len(report.drifts)})
        return {"action": "reconcile", "clean": report.clean, "drifts": len(report.drifts)}

    if action == "expire_grants":
        from metering.services.grants import expire_due

        expired = expire_due()
        logger.info("expired grants journaled", extra={"expired": expired})
        return {"action": "expire_grants", "expired": expired}

    raise ValueError(f"unknown action {action!r}: expected one of {', '.join(ACTIONS)}")
