"""Named training configs (YAML), shipped as package data."""
