"""The client on the bundled Llama-like model (models/llama-tiny-random): the family in model_info,
the BOS rule (allow_bos_non_target) and SentencePiece targets, against PyTorch's angles
(tests/golden/llama_hidden_states.json, made by tools/make_golden_llama_hidden_states.py)."""

from __future__ import annotations

import json
from typing import Iterator

import grpc
import numpy as np
import pytest

from rotations_client import Client, RotationsError

from .conftest import REPO, run_server

LLAMA_DIR = REPO / "models" / "llama-tiny-random"
GOLDEN = json.loads((REPO / "tests" / "golden" / "llama_hidden_states.json").read_text())


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with run_server(tmp_path_factory, model_dir=LLAMA_DIR) as srv, Client(srv.address, timeout=120) as c:
        yield c


def test_model_info_names_the_family_and_its_bos_token(llama: Client) -> None:
    info = llama.model_info()
    assert (info.family, info.bos_token_id, info.adds_bos, info.pad_token_id) == ("llama", 1, True, 2)
    assert json.loads(info.hidden_states)["last"] == "after the final norm"


def test_a_bos_non_target_is_refused_unless_allowed_and_matches_pytorch(llama: Client) -> None:
    sentences = GOLDEN["sentences"][:4]  # the third starts with "her": its previous token is BOS
    with pytest.raises(RotationsError) as refused:
        llama.analyze(sentences, " her")
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert 'sentence 2 ("her dog barked' in refused.value.message
    assert "allow_bos_non_target" in refused.value.message

    for target in (" her", "her"):  # SentencePiece: both name ▁her
        result = llama.analyze(sentences, target, allow_bos_non_target=True).rotations
        for j, want in enumerate(GOLDEN["rotations"]):
            report = result.sentences[j]
            assert (report.target_position, report.non_target_position) == (want["target"], want["non_target"])
            np.testing.assert_allclose(result.angles[:, j, :2], want["angles_deg"], atol=1e-3)
        positions = np.asarray(result.shuffle_draws)[..., [1, 3]]  # position_v, position_u (DRAW_FIELDS)
        assert positions.min() >= 1, "the shuffled control drew the BOS token (position 0)"
