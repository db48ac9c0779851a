"""The capacity cap, in one place: `models` (what crosses Temporal), `ledger` (the accounting, pure),
`broker` (the workflow that feeds the ledger and tells sessions) and `gate` (the session's side).
See docs/pool.md, "Capacity"."""
