"""Placeholder: this format driver is being written (see the open issue)."""
