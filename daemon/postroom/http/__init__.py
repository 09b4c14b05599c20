"""The aiohttp API: routes parse and validate requests and call services; nothing else."""
