"""Conversations service: listing, messages, and the newer frontend's create/rename/delete/tokens routes."""
