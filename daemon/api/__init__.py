"""`lipsyncd api`: the HTTP API, a thin door onto the inbox and the job store (see docs/api.md).

A job submitted over HTTP becomes a manifest in the inbox through `lipsyncd submit`'s own code, so the
render and upload watchers stay the only workers; reads are the links.json view of the job store."""
