"""Shadow mode beside Loops during the migration: Loops as a delivery route (its transactional API
behind the durable queue: `loops_client`, `loops_transport`), Loops' webhooks in
(`loops_webhooks`, `loops_events_store`), the routing of traffic between Loops and the in-house
path (`routing`, `service`, `step`, `sink`), the comparison of their outcomes (`compare`) and the
guard that rolls back and ramps (`guard`)."""
