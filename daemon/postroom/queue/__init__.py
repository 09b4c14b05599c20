"""The durable message queue: submit, claim with a lease, extend, release with an outcome, reap,
park as dead, and bring back. The shape follows a job store contract (acquire with lease, extend,
release, reap); the retry arithmetic is a pure policy in `retry`.
"""
