"""The dashboard at ``/ui``: server-rendered pages over the same services as the JSON API."""
