"""Value types: byte units, device readings, findings and a check's result.

Frozen, plain data that crosses process boundaries as JSON; nothing here imports the
tracker, a backend or a vendor library."""
