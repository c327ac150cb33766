"""Write tiny GLUE TSV fixtures, in each task's original file layout, into a temp folder.

Every fixture has a text that opens with an unbalanced ``"``: a quote-honouring reader would
swallow the following rows, so loading the right row count proves ``QUOTE_NONE``.
"""

from __future__ import annotations

from pathlib import Path

Q = '" so it goes'  # opens a quote and never closes it

# task -> (glue_dir, header or None, rows, expected [(texts, label)])
LAYOUTS: dict[str, tuple[str, list[str] | None, list[list[str]], list[tuple[tuple[str, ...], int | float]]]] = {
    "cola": (
        "CoLA", None,
        [["gj04", "1", "", "Our friends won't buy this analysis."],
         ["gj04", "0", "*", "They drank the pub."],
         ["gj04", "1", "", Q],
         ["gj04", "0", "*", "The more we study verbs, the crazier they get get."]],
        [(("Our friends won't buy this analysis.",), 1), (("They drank the pub.",), 0),
         ((Q,), 1), (("The more we study verbs, the crazier they get get.",), 0)],
    ),
    "sst2": (
        "SST-2", ["sentence", "label"],
        [["it 's a charming journey . ", "1"], [Q, "0"], ["unflinchingly bleak ", "0"],
         ["a masterpiece", "1"]],
        [(("it 's a charming journey . ",), 1), ((Q,), 0), (("unflinchingly bleak ",), 0),
         (("a masterpiece",), 1)],
    ),
    "mrpc": (
        "MRPC", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        [["1", "702876", "702977", "He said so .", "So he said ."],
         ["0", "2108705", "2108831", Q, "Yucaipa owned Dominick 's ."],
         ["1", "1330381", "1330521", "A b c", "A b c d"],
         ["0", "3344667", "3344648", "Up 5 %", "Down 5 %"]],
        [(("He said so .", "So he said ."), 1), ((Q, "Yucaipa owned Dominick 's ."), 0),
         (("A b c", "A b c d"), 1), (("Up 5 %", "Down 5 %"), 0)],
    ),
    "qqp": (
        "QQP", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        [["1", "1", "2", "How do I learn?", "How can I learn?", "1"],
         ["2", "3", "4", Q, "What is life?", "0"],
         ["3", "5", "6", "broken row without second question"],  # malformed: skipped
         ["4", "7", "8", "Why?", "Why not?", "0"],
         ["5", "9", "10", "Is it?", "Is it really?", "1"]],
        [(("How do I learn?", "How can I learn?"), 1), ((Q, "What is life?"), 0),
         (("Why?", "Why not?"), 0), (("Is it?", "Is it really?"), 1)],
    ),
    "stsb": (
        "STS-B", ["index", "genre", "filename", "year", "old_index", "source1", "source2",
                  "sentence1", "sentence2", "score"],
        [["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none",
          "A plane is taking off.", "An air plane is taking off.", "5.000"],
         ["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none",
          Q, "A man is playing a flute.", "3.800"],
         ["2", "main-news", "headlines", "2013", "0005", "none", "none",
          "Stocks fall", "Stocks rise", "0.5"],
         ["3", "main-forums", "deft", "2014", "0006", "none", "none",
          "Yes", "No", "0"]],
        [(("A plane is taking off.", "An air plane is taking off."), 5.0),
         ((Q, "A man is playing a flute."), 3.8), (("Stocks fall", "Stocks rise"), 0.5),
         (("Yes", "No"), 0.0)],
    ),
    "mnli": (
        "MNLI", ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                 "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
                 "sentence1", "sentence2", "label1", "gold_label"],
        [["0", "31193", "31193n", "government", "( x )", "( y )", "(ROOT x)", "(ROOT y)",
          "Conceptually cream skimming has two dimensions.", "Product and geography work.",
          "neutral", "neutral"],
         ["1", "101457", "101457e", "telephone", "( x )", "( y )", "(ROOT x)", "(ROOT y)",
          Q, "You lose the things.", "entailment", "entailment"],
         ["2", "134793", "134793c", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)",
          "He is here.", "He is not here.", "contradiction", "contradiction"],
         ["3", "37397", "37397e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)",
          "It rains.", "It is wet.", "entailment", "entailment"]],
        [(("Conceptually cream skimming has two dimensions.", "Product and geography work."), 1),
         ((Q, "You lose the things."), 0), (("He is here.", "He is not here."), 2),
         (("It rains.", "It is wet."), 0)],
    ),
    "qnli": (
        "QNLI", ["index", "question", "sentence", "label"],
        [["0", "When did it open?", "It opened in 1990.", "entailment"],
         ["1", Q, "Nothing relevant here.", "not_entailment"],
         ["2", "Who?", "Him.", "entailment"],
         ["3", "Where?", "Nowhere in particular.", "not_entailment"]],
        [(("When did it open?", "It opened in 1990."), 0), ((Q, "Nothing relevant here."), 1),
         (("Who?", "Him."), 0), (("Where?", "Nowhere in particular."), 1)],
    ),
    "rte": (
        "RTE", ["index", "sentence1", "sentence2", "label"],
        [["0", "Dana Reeve died.", "Christopher Reeve had an accident.", "not_entailment"],
         ["1", Q, "Bacteria win.", "entailment"],
         ["2", "A cat sat.", "An animal sat.", "entailment"],
         ["3", "It is sunny.", "It is raining.", "not_entailment"]],
        [(("Dana Reeve died.", "Christopher Reeve had an accident."), 1), ((Q, "Bacteria win."), 0),
         (("A cat sat.", "An animal sat."), 0), (("It is sunny.", "It is raining."), 1)],
    ),
    "wnli": (
        "WNLI", ["index", "sentence1", "sentence2", "label"],
        [["0", "I stuck a pin through a carrot.", "The carrot had a hole.", "1"],
         ["1", Q, "It goes.", "0"],
         ["2", "John saw Bill.", "Bill saw John.", "0"],
         ["3", "The trophy is big.", "The trophy is big.", "1"]],
        [(("I stuck a pin through a carrot.", "The carrot had a hole."), 1), ((Q, "It goes."), 0),
         (("John saw Bill.", "Bill saw John."), 0), (("The trophy is big.", "The trophy is big."), 1)],
    ),
}

SPLIT_FILES = {"mnli": ("train", "dev_matched", "dev_mismatched")}


def write_tsv(path: Path, header: list[str] | None, rows: list[list[str]], bom: bool = False) -> Path:
    """Write ``rows`` tab-separated with no quoting, as the GLUE release does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([ "\t".join(header)] if header else []) + ["\t".join(r) for r in rows]
    text = "\n".join(lines) + "\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def write_task(root: Path, task: str) -> Path:
    """Write every split of ``task`` under ``root/<glue_dir>/`` and return that folder."""
    glue_dir, header, rows, _ = LAYOUTS[task]
    folder = root / glue_dir
    for split in SPLIT_FILES.get(task, ("train", "dev")):
        write_tsv(folder / f"{split}.tsv", header, rows, bom=(task == "mrpc"))
    return folder


def write_glue(root: Path) -> Path:
    """Write all nine tasks under ``root`` (a miniature glue_data folder) and return it."""
    for task in LAYOUTS:
        write_task(root, task)
    return root
