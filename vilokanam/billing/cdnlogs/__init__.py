"""Billing and viewer counts from CDN access logs (nginx combined/JSON, CloudFront).

With segments served by a CDN the origin sees few fetches; ``vilokanam billing ingest-logs``
reads the CDN's logs (:mod:`.reader`), parses them (:mod:`.formats`), maps URLs to segments and
playlists (:mod:`.paths`) and feeds the same billing tracker and viewer counts as the origin
(:mod:`.ingest`), resumably (:mod:`.cursors`). See docs/cdn.md.

Nothing is imported here: the CLI loads only what a command needs.
"""
