"""Layer 6: plotly figures, notebook widgets and HTML reports of results."""
