"""Independent PyTorch references for the --sublayers states, by forward hooks (needs torch): used by
tools/tests/test_export_families.py (ONNX Runtime's states) and tools/check_family_analysis.py (the
server's step angles and norms, and the vectors it writes to disk: make test-families).

The modules hooked are written here, not taken from tools/families.py, so the reference does not share
the export's choice of modules: each block's mid state = block output - MLP output (in sequential and
parallel blocks alike: the MLP's output is the last thing added), and the last block's output as the
block returns it (before the final norm).
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch

# The module of each family's block whose output is the MLP's contribution to the residual stream (OPT has
# no MLP module: fc2's output, whose dropout is the identity in eval mode).
MLP_OUTPUT = {"gpt2": "mlp", "gpt_neo": "mlp", "gpt_neox": "mlp", "opt": "fc2"}
BLOCKS = {"gpt2": "h", "gpt_neo": "h", "opt": "decoder.layers"}


def sublayer_reference(model, family: str, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
    """``[resid_mid_1, ..., resid_mid_L, final_block_output]``, each ``[batch, seq, hidden]``, of ``model``
    (a transformers base model) run on ``feeds`` (input_ids, attention_mask; position_ids ignored)."""
    blocks = model.get_submodule(BLOCKS.get(family, "layers"))
    seen = {}
    hooks = []
    for i, block in enumerate(blocks):
        mlp = block.get_submodule(MLP_OUTPUT.get(family, "mlp"))
        hooks.append(mlp.register_forward_hook(lambda _m, _a, out, i=i: seen.__setitem__(("mlp", i), out)))
        hooks.append(block.register_forward_hook(lambda _m, _a, out, i=i: seen.__setitem__(("out", i), out[0] if isinstance(out, tuple) else out)))
    args = {k: torch.from_numpy(v) for k, v in feeds.items() if k != "position_ids"}
    with torch.no_grad():
        model(**args, use_cache=False)
    for hook in hooks:
        hook.remove()
    n = len(blocks)
    # OPT's fc2 runs on [batch * seq, hidden]: the block's shape again before subtracting.
    mids = [(seen[("out", i)] - seen[("mlp", i)].reshape(seen[("out", i)].shape)).numpy() for i in range(n)]
    return mids + [seen[("out", n - 1)].numpy()]
