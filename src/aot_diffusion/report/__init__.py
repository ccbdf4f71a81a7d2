"""Tables (CSV + Markdown) and figures (PNG) from the measured results."""
