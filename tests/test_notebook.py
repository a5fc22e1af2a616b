"""notebooks/quickstart.ipynb runs in a real Jupyter kernel, on synthetic data, cell by cell;
the committed file carries no outputs."""

import nbformat
import pytest
from conftest import REPO, write_dataset

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path):
    from nbclient import NotebookClient

    write_dataset(tmp_path / "data" / "MNIST" / "raw", n_train=5256, n_test=256)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source += '\nOVERRIDES += ["debug=fast"]'
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) == 3  # reconstructions, samples, latent scatter
    assert not [o for o in outputs if o.output_type == "error"]
    text = [o.get("text", "") + str(o.get("data", {})) for o in outputs]
    assert not [t for t in text if "ipywidgets" in t]  # the `notebook` extra has them
    assert list((tmp_path / "logs" / "train" / "runs").glob("*/checkpoints/*.ckpt"))
