"""Emit: turn the resolved run into the backpack's files (their models: auditor/backpack/)."""
