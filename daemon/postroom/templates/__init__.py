"""Templates: versioned email templates, their layouts and partials, rendered in a sandbox.

`model` holds the values (a version's source, a rendered message), `sandbox` the Jinja2
environment with its budget, `validation` the data schema of a version, `compiler` turns a version
with its layout and partials into a compiled template and renders it (pure, CPU-bound: callers run
it in a thread), `bundle` reads and writes the directory format kept in git, and `service` is what
the API, the CLI and message sending use (storage, caching per version, publishing).
"""
