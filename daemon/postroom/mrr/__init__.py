"""Monthly recurring revenue as shared/specs/MRR.md defines it: the value of a subscription
(`valuation`), currencies and rates (`money`), the policies every figure is printed with
(`policies`), movements and the roll-forward (`movements`), the ledger in the database (`ledger`)
and the service the CLI, API and metrics read (`service`). The arithmetic modules are pure."""
