"""The fault-injection suite (issue 12): docs/faults.md."""
