"""Request rate limits per API key: quotas and their arithmetic (`quota`), the table of buckets
every process of a daemon shares (`table`), and which quota a request counts against (`policy`)."""
