"""Assistants (persisted, versioned, owned) and the graphs they run, loaded from langgraph.json."""
