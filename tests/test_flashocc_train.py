"""Training on procedural scenes (examples/flashocc/train.py): a few steps of `tiny` lower the
loss; the shipped `small` checkpoint loads into the float32 model and reaches its mIoU on
held-out scenes; examples/flashocc.py's get_validation_data/metric on `tiny`."""

import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from flashocc import TINY, FlashOcc, load_checkpoint  # noqa: E402
from flashocc.config import SMALL  # noqa: E402
from flashocc.metric import IGNORE  # noqa: E402
from flashocc.train import (  # noqa: E402
    CHECKPOINT,
    TRAIN_SEED,
    VALIDATION_SEED,
    depth_labels,
    evaluate,
    train,
    validation_scenes,
)

from dynexport.script import load_script  # noqa: E402

# Measured with the shipped checkpoint on the first 4 held-out scenes: 21.57 (docs/flashocc.md,
# "A trained reference model"); the threshold sits a little below.
SMALL_MIOU_4_SCENES = 19.0


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_few_steps_of_tiny_lower_the_loss(one_thread):
    _, summary = train(TINY, steps=16, scenes=2, batch=2, val_scenes=0, log=lambda _: None)
    losses = summary["losses"]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.7 * losses[0], losses


def test_training_is_deterministic(one_thread):
    runs = [train(TINY, steps=3, scenes=1, batch=1, val_scenes=0, log=lambda _: None)
            for _ in range(2)]
    assert runs[0][1]["losses"] == runs[1][1]["losses"]
    for a, b in zip(runs[0][0].state_dict().values(), runs[1][0].state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_depth_labels_take_the_nearest_hit_per_patch():
    depth = torch.zeros(1, TINY.input_size[0], TINY.input_size[1])
    depth[0, 3, 5], depth[0, 7, 9] = 12.5, 7.2  # both in patch (0, 0); depth bins of 5 m from 1
    depth[0, 20, 40] = 50.0  # patch (1, 2): beyond the last bin
    labels = depth_labels(depth, TINY)
    assert labels.shape == (1, 4, 12)
    assert labels[0, 0, 0] == 1  # 7.2 m: (7.2 - 1) // 5
    assert labels[0, 1, 2] == -1 and (labels[0].flatten()[1:] == -1).all()


def test_validation_seeds_are_disjoint_from_training():
    assert VALIDATION_SEED > TRAIN_SEED + 100_000


def test_shipped_small_checkpoint_reaches_its_miou(one_thread):
    assert CHECKPOINT.stat().st_size < 20e6
    model = load_checkpoint(FlashOcc(SMALL), CHECKPOINT).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    matrix = evaluate(model, validation_scenes(SMALL, 4))
    assert matrix.miou() >= SMALL_MIOU_4_SCENES


def test_script_validation_data_and_metric_on_tiny(one_thread):
    script = load_script(EXAMPLES / "flashocc.py", ["--config", "tiny"])
    module = sys.modules["_dynexport_script_flashocc"]
    data = list(module.get_validation_data())
    assert len(data) == 4
    inputs, target = data[0]
    assert len(inputs) == len(script.example.args)
    assert target.shape == (*TINY.grid.size[:2], TINY.dz) and target.dtype == torch.uint8
    with torch.no_grad():
        outputs = [script.model(*x) for x, _ in data]
    scores = module.metric(outputs, [t for _, t in data])
    assert next(iter(scores)) == "mIoU" and 0.0 <= scores["mIoU"] <= 100.0
    # The ground truth itself scores 100 (unseen voxels filled with any label).
    perfect = [{"occupancy": torch.where(t == IGNORE, 17, t).unsqueeze(0)} for _, t in data]
    assert module.metric(perfect, [t for _, t in data])["mIoU"] == pytest.approx(100.0)
