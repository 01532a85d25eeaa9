import csv

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger

from lastvit.analysis import evaluate_pib
from lastvit.analysis.dynamics import DynamicsCallback, plot_dynamics


class MemLogger(Logger):
    def __init__(self):
        super().__init__()
        self.metrics = []

    @property
    def name(self):
        return "mem"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))


class Tiny(pl.LightningModule):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.modes = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.modes.append(self.model.training)
        return torch.nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_dynamics_callback_logs_csv_and_plot(micro_vit, tmp_path):
    torch.manual_seed(0)
    probe = {"image": torch.randn(4, 3, 64, 64), "boxes": [torch.tensor([[0.0, 0.0, 32.0, 32.0]])] * 4,
             "label": torch.tensor([0, 1, 2, 0])}
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 64, 64), torch.randint(0, 3, (8,)))
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    cb = DynamicsCallback(probe, every_n_steps=2, out_dir=tmp_path, run_name="lazy")
    logger = MemLogger()
    module = Tiny(micro_vit("lazystrike", num_classes=3).train())
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=logger, callbacks=[cb], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    with open(tmp_path / "dynamics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 2, 3]  # start, every 2 steps, end
    assert all(r["run"] == "lazy" for r in rows)
    # the last row equals a direct evaluation of the trained model on the probe
    metrics, _ = evaluate_pib(module.model, [probe])
    assert float(rows[-1]["pib"]) == pytest.approx(metrics["pib"])
    assert float(rows[-1]["accuracy"]) == pytest.approx(metrics["accuracy"])
    logged = [s for s, m in logger.metrics if "probe/pib" in m]
    assert logged == [0, 2, 3]
    assert module.modes == [True, True, True]  # the probes at steps 0 and 2 restored train mode
    assert (tmp_path / "dynamics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="not a dynamics CSV"):
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b\n1,2\n")
        plot_dynamics(bad, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
