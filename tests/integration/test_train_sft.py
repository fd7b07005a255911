"""Training runs on TRL's SFTTrainer, and the loss it optimises is the masked cross-entropy
over tuneship's own labels: TRL re-templates, re-tokenizes and re-masks nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tuneship.common.events import ListSink
from tuneship.common.spec import PipelineSpec
from tuneship.trainer import train

pytestmark = pytest.mark.integration


def test_the_trainer_is_trls_and_its_loss_is_the_masked_cross_entropy(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from trl import SFTConfig, SFTTrainer
    from tuneship.trainer import run, sft
    from tuneship.trainer.masking import IGNORE

    built: dict = {}

    def keep(model, prepared, config, collator, bridge):
        built["prepared"] = prepared
        built["trainer"] = sft.build_trainer(model, prepared, config, collator, bridge)
        return built["trainer"]

    monkeypatch.setattr(run, "build_trainer", keep)
    data = sample_data / "chat"
    spec = PipelineSpec.model_validate(
        {
            "apiVersion": "tuneship/v1",
            "metadata": {"name": "sft"},
            "model": {"base": str(tiny_chatml)},
            "dataset": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")},
            "train": {"max_steps": 1, "per_device_train_batch_size": 4},
        }
    )
    train(spec, tiny_chatml, tmp_path / "out", ListSink())
    trainer, prepared = built["trainer"], built["prepared"]
    assert isinstance(trainer, SFTTrainer) and isinstance(trainer.args, SFTConfig)

    batch = next(iter(trainer.get_train_dataloader()))
    # Every row is one of tuneship's examples, its labels exactly tuneship's mask.
    ours = {tuple(e.input_ids): e.labels for e in prepared.train}
    rows = zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True)
    for ids, labels, mask in rows:
        length = int(mask.sum())
        assert ours[tuple(ids[:length].tolist())] == labels[:length].tolist()
        assert (labels[length:] == IGNORE).all()
    assert (batch["labels"] == IGNORE).any() and (batch["labels"] != IGNORE).any()

    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    trained = targets != IGNORE
    log_probs = torch.log_softmax(logits[:, :-1][trained].float(), dim=-1)
    by_hand = -log_probs.gather(1, targets[trained].unsqueeze(1)).mean()
    assert torch.allclose(loss, by_hand, rtol=1e-5, atol=0), (float(loss), float(by_hand))


CONCURRENT_IMPORTS = """
import sys, threading
from pathlib import Path
from tuneship.common.spec import TrainSpec
from tuneship.trainer import sft
failed = []
def build():
    try:
        sft.sft_config(TrainSpec(), Path(sys.argv[1]), packed=False)
        sft._tuneship_sft_trainer()
    except Exception as exc:
        failed.append(repr(exc))
threads = [threading.Thread(target=build) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(failed)
"""


def test_trainings_started_together_in_one_process_all_get_trl(tmp_path: Path) -> None:
    # A trainer runs several trainings in threads; TRL's lazy module, first touched by
    # two at once, refused one ("cannot import name 'SFTConfig'") before the import lock.
    done = subprocess.run([sys.executable, "-c", CONCURRENT_IMPORTS, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
