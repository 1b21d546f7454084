"""Tokenizers with CWM's special-token layout (SPEC §1).

CWM's vocabulary is 128,000 byte-level BPE tokens (tiktoken format, Llama-3 split regex) followed by 256 special
ids; ``special_tokens.CWM_IDS`` gives the named ones. Two kinds of tokenizer share one interface:

- ``Tokenizer.from_tiktoken(path)``: CWM's own ``tokenizer.model`` (a tiktoken rank file), specials at CWM's ids;
- ``Tokenizer.train(texts, vocab_size)``: a small byte-level BPE for the models trained here (a few thousand
  tokens), with the same 256 special slots right after it, in the same order (so ``<|frame_sep|>`` is always the
  BPE size + 100). Saved as ``tokenizer.json`` (loadable by ``transformers``' ``PreTrainedTokenizerFast``) with
  every checkpoint.

Special tokens are never produced from text unless the caller asks (``allow_special=True``): text that happens
to contain ``<|frame_sep|>`` is encoded as ordinary characters.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from opencwm.chat import CHAT_TEMPLATE
from opencwm.special_tokens import CWM_IDS, NUM_SPECIAL, special_token_fields

# Llama 3's pre-tokenization regex (CWM uses it with its tiktoken vocabulary).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
CWM_BPE_SIZE = 128000


def special_token_names() -> list[str]:
    """The 256 special slots in order: CWM's named tokens at their offsets, reserved names elsewhere."""
    names = [f"<|reserved_special_token_{i}|>" for i in range(NUM_SPECIAL)]
    for name, token_id in CWM_IDS.items():
        names[token_id - CWM_BPE_SIZE] = name
    return names


class Tokenizer:
    def __init__(self, *, hf=None, tiktoken_encoding=None, tiktoken_file: Path | None = None, bpe_size: int):
        self._hf = hf  # tokenizers.Tokenizer with the specials registered (decoding, saving)
        self._plain = None  # the same BPE without specials (encoding user text)
        self._tiktoken = tiktoken_encoding
        self._tiktoken_file = tiktoken_file  # the rank file a tiktoken tokenizer was read from (saved as is)
        self.bpe_size = bpe_size
        self.special_ids = {name: bpe_size + i for i, name in enumerate(special_token_names())}
        self._special_pattern = re.compile("|".join(re.escape(n) for n in self.special_ids))
        if hf is not None:
            from tokenizers import Tokenizer as HFTokenizer

            data = json.loads(hf.to_str())
            data["added_tokens"] = []
            self._plain = HFTokenizer.from_str(json.dumps(data))

    @property
    def vocab_size(self) -> int:
        return self.bpe_size + NUM_SPECIAL

    def token_id(self, name: str) -> int:
        return self.special_ids[name]

    def config_fields(self) -> dict:
        """The model config fields this tokenizer decides: the vocabulary size and the ids ``config.json`` names
        as beginning and end of text (CWM's: begin of text; end of text, message and turn), so that
        ``transformers`` and vLLM start and stop where opencwm does. CWM's own tokenizer gives CWM's values."""
        return {"vocab_size": self.vocab_size, **special_token_fields(self.vocab_size)}

    # -- encoding ---------------------------------------------------------------------------------------------------
    def _encode_plain(self, text: str) -> list[int]:
        if self._tiktoken is not None:
            return self._tiktoken.encode(text, disallowed_special=())
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        if not allow_special:
            return self._encode_plain(text)
        ids, start = [], 0
        for match in self._special_pattern.finditer(text):
            ids += self._encode_plain(text[start : match.start()])
            ids.append(self.special_ids[match.group(0)])
            start = match.end()
        return ids + self._encode_plain(text[start:])

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if self._tiktoken is not None:
            return self._tiktoken.decode(ids)
        names = {v: k for k, v in self.special_ids.items()}
        out, run = [], []
        for token in ids:  # decode BPE runs with the byte-level decoder, specials verbatim
            if token in names:
                out.append(self._plain.decode(run, skip_special_tokens=False) if run else "")
                out.append(names[token])
                run = []
            else:
                run.append(token)
        out.append(self._plain.decode(run, skip_special_tokens=False) if run else "")
        return "".join(out)

    # -- construction -----------------------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
        """Train a byte-level BPE of at most ``vocab_size`` tokens (the 256 specials come on top)."""
        from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
        from tokenizers import Tokenizer as HFTokenizer

        if vocab_size < 257:
            raise ValueError("vocab_size must exceed the 256 byte tokens")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=[], show_progress=False)
        hf.train_from_iterator(texts, trainer)
        bpe_size = hf.get_vocab_size()
        from tokenizers import AddedToken

        hf.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in special_token_names()])
        return cls(hf=hf, bpe_size=bpe_size)

    @classmethod
    def from_tiktoken(cls, path: str | Path) -> Tokenizer:
        """CWM's ``tokenizer.model``: base64 token + rank per line; specials at CWM's ids after the ranks."""
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(path))
        bpe_size = len(ranks)
        specials = {name: bpe_size + i for i, name in enumerate(special_token_names())}
        encoding = tiktoken.Encoding(name=Path(path).stem, pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                                     special_tokens=specials)
        return cls(tiktoken_encoding=encoding, tiktoken_file=Path(path), bpe_size=bpe_size)

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """A checkpoint directory's ``tokenizer.json`` or, failing that, its tiktoken ``tokenizer.model``."""
        directory = Path(directory)
        if (directory / "tokenizer.json").exists():
            from tokenizers import Tokenizer as HFTokenizer

            hf = HFTokenizer.from_file(str(directory / "tokenizer.json"))
            first_special = hf.token_to_id(special_token_names()[0])
            if first_special is None:
                raise ValueError(f"{directory}/tokenizer.json lacks CWM's special tokens")
            return cls(hf=hf, bpe_size=first_special)
        if (directory / "tokenizer.model").exists():
            return cls.from_tiktoken(directory / "tokenizer.model")
        raise FileNotFoundError(f"{directory}: no tokenizer.json or tokenizer.model")

    @staticmethod
    def exists(directory: str | Path) -> bool:
        """Whether ``directory`` holds a tokenizer ``load`` reads."""
        return (Path(directory) / "tokenizer.json").exists() or (Path(directory) / "tokenizer.model").exists()

    @classmethod
    def train_or_load(cls, directory: str | Path, texts, *, vocab_size: int) -> Tokenizer:
        """The tokenizer saved in ``directory``, or one trained on ``texts()`` (a callable, so the corpus is read
        only when needed) and saved there first."""
        if not cls.exists(directory):
            cls.train(texts(), vocab_size=vocab_size).save(directory)
        return cls.load(directory)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path, tokenizer: str | Path | None = None) -> Tokenizer:
        """The tokenizer of a checkpoint model directory: ``tokenizer`` when given, else the one saved with the
        weights, else (runs of older opencwm) the run's own (``RUN/checkpoints/step-N/model`` -> ``RUN/tokenizer``)."""
        checkpoint = Path(checkpoint)
        if tokenizer:
            return cls.load(tokenizer)
        if (checkpoint / "tokenizer.json").exists() or (checkpoint / "tokenizer.model").exists():
            return cls.load(checkpoint)
        return cls.load(checkpoint.parent.parent.parent / "tokenizer")

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` and the config files ``transformers.AutoTokenizer`` reads, with CWM's chat
        template (``opencwm.chat.CHAT_TEMPLATE``); a tokenizer read from CWM's ``tokenizer.model`` writes that file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._hf is None:  # CWM's tiktoken tokenizer: its rank file, as loaded
            target = directory / "tokenizer.model"
            if not (target.exists() and target.samefile(self._tiktoken_file)):
                shutil.copyfile(self._tiktoken_file, target)
            return
        self._hf.save(str(directory / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<|pad|>",
            "clean_up_tokenization_spaces": False, "model_max_length": 131072, "chat_template": CHAT_TEMPLATE,
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
        (directory / "special_tokens_map.json").write_text(json.dumps(
            {k: config[k] for k in ("bos_token", "eos_token", "pad_token")}, indent=1))
