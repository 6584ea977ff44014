"""Use cases: each takes validated models, runs one transaction, returns models or raises
metering.errors. No HTTP, SQS or Stripe concerns here."""
