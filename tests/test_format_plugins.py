import subprocess
import sys

import torch

import nncompress
import nncompress.train
from nncompress.data import load_dataset
from nncompress.models import build_model
from nncompress.quantize import quantize_model


def test_fresh_process_loads_lowbit_file_with_activation_quantizers(tmp_path):
    """A file written by a low-bit method loads in a process that never imported the
    quantizers, with its activation quantizers re-attached (same outputs)."""
    torch.manual_seed(0)
    model = build_model("lenet5")
    data = load_dataset("digits", "test")
    quantize_model(model, "xnor", train_data=data, calib_data=data,
                   train_cfg=nncompress.train.TrainConfig(epochs=1, max_steps=2, batch_size=32))
    x = data.tensors[0][:8]
    model.eval()
    ref = model(x)
    path = tmp_path / "x.nnc"
    nncompress.save(model, path)
    torch.save(x, tmp_path / "x.pt")
    torch.save(ref.detach(), tmp_path / "ref.pt")
    code = (
        "import sys, torch, nncompress\n"
        f"torch.set_num_threads({torch.get_num_threads()})  # the parent's: same summation order\n"
        f"m = nncompress.load({str(path)!r})\n"
        "assert 'nncompress.quantize.api' in sys.modules\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)\n"
        f"ref = torch.load({str(tmp_path / 'ref.pt')!r}, weights_only=True)\n"
        "assert torch.equal(m(x), ref), (m(x) - ref).abs().max()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
