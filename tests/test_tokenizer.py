"""Tokenizers with CWM's special-token layout: trained byte-level BPE (checked against transformers' loader) and
tiktoken rank files like CWM's own tokenizer.model (one is made here)."""

from __future__ import annotations

import base64
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opencwm.special_tokens import CWM_IDS, FRAME_SEP, STOP_TOKENS
from opencwm.tokenizer import NUM_SPECIAL, Tokenizer


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:60]
    return Tokenizer.train((p.read_text(encoding="utf-8", errors="replace") for p in sources), vocab_size=1500)


def test_trained_vocabulary_has_cwm_specials_right_after_the_bpe(trained):
    assert trained.bpe_size == 1500 and trained.vocab_size == 1500 + NUM_SPECIAL
    for name, cwm_id in CWM_IDS.items():
        assert trained.token_id(name) == trained.bpe_size + (cwm_id - 128000)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_round_trips_and_never_yields_specials(trained, text):
    ids = trained.encode(text)
    assert trained.decode(ids) == text
    assert all(i < trained.bpe_size for i in ids)


def test_special_strings_in_user_text_stay_text_unless_allowed(trained):
    text = f"x = '{FRAME_SEP}'  # not a frame boundary"
    plain = trained.encode(text)
    assert trained.token_id(FRAME_SEP) not in plain and trained.decode(plain) == text
    allowed = trained.encode(text, allow_special=True)
    assert allowed.count(trained.token_id(FRAME_SEP)) == 1 and trained.decode(allowed) == text


def test_saved_tokenizer_loads_in_transformers_and_here(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    trained.save(tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    sample = Path(sysconfig.get_paths()["stdlib"], "textwrap.py").read_text()[:3000] + FRAME_SEP + "tail"
    ours = trained.encode(sample, allow_special=True)
    assert reference.encode(sample, add_special_tokens=False) == ours
    assert reference.decode(ours) == sample
    assert reference.convert_tokens_to_ids(FRAME_SEP) == trained.token_id(FRAME_SEP)
    assert Tokenizer.load(tmp_path).encode(sample) == trained.encode(sample)


def _write_tiktoken_file(path: Path, size: int) -> dict[bytes, int]:
    ranks = {bytes([b]): b for b in range(256)}
    for token in (b"ab", b"abc", b"de", b"  "):
        ranks[token] = len(ranks)
    while len(ranks) < size:  # filler tokens (never reachable by merges), to reach CWM's 128,000
        ranks[f"<filler {len(ranks)}>".encode()] = len(ranks)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    return ranks


def test_tiktoken_model_file_gets_cwm_ids(tmp_path):
    pytest.importorskip("tiktoken")
    ranks = _write_tiktoken_file(tmp_path / "tokenizer.model", 128000)
    tok = Tokenizer.load(tmp_path)
    assert tok.vocab_size == 128256
    for name, cwm_id in CWM_IDS.items():
        assert tok.token_id(name) == cwm_id
    # byte-pair merges by rank: "abc" merges a+b first (rank 256), then ab+c (rank 257)
    assert tok.encode("abc") == [ranks[b"abc"]]
    assert tok.encode("abd") == [ranks[b"ab"], ord("d")]
    text = f"abc {FRAME_SEP} de"
    assert CWM_IDS[FRAME_SEP] not in tok.encode(text) and tok.decode(tok.encode(text)) == text
    assert tok.encode(text, allow_special=True).count(CWM_IDS[FRAME_SEP]) == 1
    # A model for it is configured as the released CWM (vocabulary, begin and end of text), and it saves as it came.
    from opencwm.model import CwmConfig

    released = CwmConfig()
    assert tok.config_fields() == {"vocab_size": released.vocab_size, "bos_token_id": released.bos_token_id,
                                   "eos_token_id": released.eos_token_id}
    tok.save(tmp_path / "copy")
    assert Tokenizer.load(tmp_path / "copy").encode(text, allow_special=True) == tok.encode(text, allow_special=True)


def test_a_model_for_this_tokenizer_names_its_begin_and_end_tokens(trained, tmp_path):
    """A checkpoint of a model trained with a small tokenizer: ``transformers`` reads the same begin and end of text
    from its config.json as from the tokenizer saved beside it (they would otherwise be CWM's 128k ids, outside the
    vocabulary, and a server would never stop at the end of text)."""
    transformers = pytest.importorskip("transformers")
    from opencwm.model import CWM, preset

    fields = trained.config_fields()
    assert preset("nano", vocab_size=trained.vocab_size) == preset("nano", **fields)  # a preset's default layout
    CWM(preset("nano", **fields)).save_pretrained(tmp_path)
    trained.save(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert config.vocab_size == len(tokenizer) == trained.vocab_size
    assert config.bos_token_id == tokenizer.bos_token_id
    assert tokenizer.eos_token_id in config.eos_token_id
    assert tokenizer.convert_ids_to_tokens(config.eos_token_id) == list(STOP_TOKENS)


CONVERSATIONS = [
    [{"role": "user", "content": "What does f(3) return?\n\ndef f(x):\n    return x * 'ab'"}],
    [{"role": "system", "content": "You are a helpful AI assistant."},
     {"role": "user", "content": "Fix the failing test."},
     {"role": "assistant", "content": "<think>\nlook first\n</think>\n<tool: bash>\npytest -x -q\n</tool>"},
     {"role": "tool: bash", "content": "1 failed, 3 passed\n{'quotes': \"and\" {{ braces }} }"}],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("think", [False, True])
def test_saved_chat_template_prompts_as_the_chat_codec_does(trained, tmp_path, conversation, think):
    """``transformers``' ``apply_chat_template`` (what vLLM's chat endpoint runs) on the saved tokenizer gives the
    text and the token ids of ``opencwm.chat.encode_messages``."""
    transformers = pytest.importorskip("transformers")
    from opencwm.chat import encode_messages

    trained.save(tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for prompt in (False, True):
        ours = encode_messages(conversation, add_generation_prompt=prompt, think=think)
        kwargs = dict(add_generation_prompt=prompt, enable_thinking=think)
        assert reference.apply_chat_template(conversation, tokenize=False, **kwargs) == ours
        ids = reference.apply_chat_template(conversation, tokenize=True, return_dict=True, **kwargs)["input_ids"]
        assert list(ids) == trained.encode(ours, allow_special=True)
