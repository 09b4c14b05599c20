"""The Loops-compatible API: the calls of Loops' REST API and of its official SDKs, answered the way
Loops answers them, at `/api/v1` (an aiohttp sub-application with its own errors and auth), backed by
postroom's templates, contacts, suppression list and submission door. Moving an application off Loops
is a change of base URL.

`app` assembles the sub-application; `errors` holds Loops' error shapes and auth; the route modules
(`transactional`, `catalogue`, `contact_routes`, `event_routes`) are cut by the calls they answer.
"""
