"""Benchmark settings: a model, its dictionaries and a batch, built offline."""

from __future__ import annotations

import torch

import featurecircuits as fc

PYTHIA_70M = dict(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                  intermediate_size=2048, max_position_embeddings=2048, rotary_pct=0.25,
                  use_parallel_residual=True)


def random_batch(vocab: int, n: int, t: int, seed: int = 0) -> fc.Batch:
    g = torch.Generator().manual_seed(seed)
    return fc.Batch(torch.randint(0, vocab, (n, t), generator=g), torch.randint(0, vocab, (n, t), generator=g),
                    torch.randint(0, vocab, (n,), generator=g), torch.randint(0, vocab, (n,), generator=g))


def pythia70m_shaped(width: int = 32768, n: int = 10, t: int = 16, seed: int = 0):
    """Pythia-70M's shape with random weights, and random AutoEncoders of ``width`` for all 19 submodules."""
    import transformers as tr
    from dictionary_learning import AutoEncoder

    torch.manual_seed(seed)
    model = fc.load_model(tr.GPTNeoXForCausalLM(tr.GPTNeoXConfig(**PYTHIA_70M)))
    dicts = {}
    for sub in model.submodules:
        ae = AutoEncoder(model.d_model, width)
        with torch.no_grad():
            ae.encoder.bias.fill_(-0.02)  # sparse-ish features
        ae.activation_dim, ae.dict_size = model.d_model, width
        dicts[sub.name] = ae.eval().requires_grad_(False)
    return model, dicts, random_batch(PYTHIA_70M["vocab_size"], n, t, seed)


def organism(n: int = 10):
    model = fc.load_model("organism")
    dicts = fc.load_dictionaries("organism", model)
    task = fc.tasks.Task("ioi", fc.tasks.make_task("ioi", 3 * n, seed=0))
    batch = next(b for b in task.batches(model.tokenizer, n) if len(b) == n)
    return model, dicts, batch
