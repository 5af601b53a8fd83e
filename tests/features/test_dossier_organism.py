"""Dossiers of the organism's trained dictionaries on its own corpus (the default corpus for the organism)."""

from __future__ import annotations

import pytest

from featurecircuits.features import OrganismCorpus, build_dossiers, open_corpus

pytestmark = pytest.mark.organism


@pytest.fixture(scope="module")
def organism_dossiers(organism):
    model, dicts = organism
    corpus = open_corpus(None, model.tokenizer, model_name=model.name, max_sequences=96)
    assert isinstance(corpus, OrganismCorpus)
    subset = {name: dicts[name] for name in ("embed", "resid_2")}
    return model, build_dossiers(model, subset, corpus, progress=False)


def test_embedding_features_are_token_detectors(organism_dossiers):
    _, dossiers = organism_dossiers
    single = total = 0
    for feat in range(dossiers.states["embed"].width):
        card = dossiers.card("embed", feat)
        peaks = {c["token_ids"][c["peak"]] for c in card["top_contexts"]}
        if len(card["top_contexts"]) >= 3:
            total += 1
            single += len(peaks) == 1
    assert total > 300 and single / total > 0.6  # 77 % on this corpus: most embed features name one word


def test_organism_cards_read_as_words(organism_dossiers):
    model, dossiers = organism_dossiers
    vocab = set(model.tokenizer.get_vocab())
    cards = dossiers.cards([f"resid_2/f{i}@3" for i in range(40)])
    firing = [c for c in cards.values() if c["n_active"]]
    assert len(firing) > 20
    for card in firing:
        assert card["label_source"] == "auto" and card["label"].startswith("‹")
        assert all(t in vocab for c in card["top_contexts"] for t in c["tokens"])
        assert {t["token"] for t in card["promoted"]} <= vocab
        assert card["corpus"]["kind"] == "organism" and not card["corpus_is_task_prompts"]
        assert sum(card["histogram"]["counts"]) == card["n_active"]
