"""Reading an executed notebook (a papermill run's .ipynb as JSON), shared by the tests that run notebooks."""


def error_outputs(nb: dict) -> list:
    """The error outputs of the notebook's code cells (empty: every cell ran)."""
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
