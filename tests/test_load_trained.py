"""train.load.load_trained: the one loader of a trained run (eval, export, golf use it)."""
import pytest
import torch

import eval_helpers as H

from scalelab.errors import CheckpointError
from scalelab.train.load import Trained, load_trained

pytestmark = pytest.mark.usefixtures("one_thread")


def test_run_dir_checkpoint_dir_and_step_name_load_the_same_model():
    t = load_trained(H.run_dir())
    assert isinstance(t, Trained) and t.path.name == "step_000200" and t.run_dir == H.run_dir()
    assert not t.model.training and t.tokenizer.identity == H.tokenizer().identity
    assert t.state["step"] == 200 and t.weights_file.name == "model.safetensors"
    x = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        ref = H.trained_gpt()(x)
        for other in (load_trained(t.path), load_trained(H.run_dir(), which="step_200"),
                      load_trained(H.run_dir(), which="step_000200"), load_trained(f"{H.run_dir()}@last")):
            assert other.path == t.path
            assert torch.equal(other.model(x), t.model(x))
        assert torch.allclose(t.model(x), ref, atol=1e-6)


def test_bad_which_and_missing_step_and_ema_are_clear_errors():
    with pytest.raises(CheckpointError, match="no checkpoint 'step_000007'.*step_000200"):
        load_trained(H.run_dir(), which="step_7")
    with pytest.raises(CheckpointError, match="'last', 'best' or step_N"):
        load_trained(H.run_dir(), which="newest")
    with pytest.raises(CheckpointError, match="weights='fp8'"):
        load_trained(H.run_dir(), weights="fp8")
    with pytest.raises(CheckpointError, match="no EMA weights"):  # trained without train.ema_decay
        load_trained(H.run_dir(), weights="ema")
