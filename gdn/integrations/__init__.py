"""Bridges from other frameworks to gdn layers (import the submodule you need: it imports its framework)."""
