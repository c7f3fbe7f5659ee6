"""scripts/multiquery_flow.py: the positions and spans it reads, the counterfactual questions it writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lm_eval_ssmsteer.taskdata import generate

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("multiquery_flow", ROOT / "scripts" / "multiquery_flow.py")
flow = importlib.util.module_from_spec(spec)
spec.loader.exec_module(flow)


def test_each_slot_predicts_its_first_digit_and_its_spans_hold_what_they_name():
    docs = generate("ssm_niah_multiquery", "test", 6, 0, length=512)
    for doc in docs:
        d = flow.slot_positions(doc)
        text, values = d["text"], [v.strip(" .") for v in doc["completion"].split(",")]
        question = doc["context"].rindex("\n") + 1
        for slot, s in enumerate(d["slots"]):
            key, other = doc["keys"][slot], doc["keys"][1 - slot]
            assert text[s["predicting"] + 1] == s["gold"] == values[slot][0]
            src = s["sources"]
            own = "".join(text[p] for p in src["own needle"])
            assert own == next(n for n in doc["needles"] if f" {key} " in n)
            assert values[slot] in own
            assert values[1 - slot] in "".join(text[p] for p in src["other key's needle"])
            distract = "".join(text[p] for p in src["distractor needles"])
            assert len(distract) > 0 and not any(v in distract for v in values)
            # the question line names the key twice ("What are ... for A and B? The ... for A and B are")
            assert "".join(text[p] for p in src["own key in question"]) == key * 2
            assert "".join(text[p] for p in src["other key in question"]) == other * 2
            assert all(p >= question for p in src["own key in question"])
            control = "".join(text[p] for p in src["filler control"])
            assert len(control) == len(own) and not any(ch.isdigit() for ch in control)


def test_a_swapped_question_asks_a_distractor_and_teacher_forces_its_value():
    doc = generate("ssm_niah_multiquery", "test", 1, 0, length=512)[0]
    cases = flow.swapped_questions(doc)
    assert {c["slot"] for c in cases} == {0, 1}
    for c in cases:
        text, p = c["text"], c["predicting"]
        assert text[p + 1] == c["asked"] != c["original"]
        asked_line = text[text.rindex("\n") + 1 :]
        assert doc["keys"][c["slot"]] not in asked_line  # both mentions replaced
        assert doc["keys"][1 - c["slot"]] in asked_line
        assert (
            text[: text.rindex("\n")] == doc["context"][: doc["context"].rindex("\n")]
        )  # haystack unchanged
