"""Business rules of metering.md as plain functions over plain data: no I/O, no AWS."""
