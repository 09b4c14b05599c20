"""Shadow mode beside Loops during the migration: Loops as a delivery route (its transactional API
behind the durable queue: `loops_client`, `loops_transport`), the routing of traffic between
Loops and the in-house path, the comparison of their outcomes and the guard that rolls back."""
